"""CUDA graphs for the fast path's training step: forward, backward and the AdamW update replayed as one graph.

A T5-small step at batch 32 is thousands of small kernels; eagerly, launching them (and the Python
that decides them) costs more than running them (docs/speed.md). A CUDA graph records
the step's kernels once and replays them with one launch. What it needs, and how this module provides it:

* Static shapes: the fast path's training loader pads inputs to a few length buckets and labels to one
  length (`ptuning.engine.fast.BucketCollator`), so a run sees a handful of batch shapes; one graph per shape.
* No host synchronisation and no host-to-device copy inside the step: a copy from pageable host memory
  is illegal while a stream is being captured, and the capture fails. Under transformers 4.57.6 a training
  forward has two such spots: `T5ForConditionalGeneration._shift_right` (`ids[..., 0] = start` lifts a
  Python int into a CPU tensor and copies it over) and the decoder's KV cache, which the model builds even
  in training unless told not to (`DynamicLayer` starts from `torch.tensor([], device=...)`). `step_loss`
  passes `decoder_input_ids` made by `shift_right` below with device-side ops only (the same ids: the same
  loss, bit for bit) and `use_cache=False` (the same loss; the backward sums a few gradient terms in
  another order, so gradients agree to float rounding, about 1e-8). tests/test_graphs.py checks both, and
  that the step makes no host sync or copy, for every method, on CPU.
* Static memory: the captured step reads its batch from fixed input buffers (each new batch is copied in),
  accumulates into gradient tensors that exist before capture (`zero_grad(set_to_none=False)`), and
  updates with a capturable AdamW (`torch.optim.AdamW(fused=True, capturable=True)`: the same update, its
  step counter on the device). All graphs share one memory pool; each replay's loss is copied out at once.
* Warm-up: the first batch of each new shape trains eagerly on a side stream (a real step, not a
  throw-away one: the training math and the number of steps are unchanged), then that shape is captured.
* Autocast with `cache_enabled=False` (the cast cache must not outlive a capture) and dropout as usual:
  the default CUDA generator is graph-safe, each replay draws new dropout masks.

If a capture fails, the step says why once (`GraphedTrainStep.failure`) and trains eagerly from then on:
graphs are an optimisation, a run is never lost to one. On CPU (tests) nothing is captured: every step
runs eagerly through the same code.
"""

from __future__ import annotations

from typing import Callable

import torch

from ptuning.data import IGNORE_INDEX
from ptuning.errors import one_line


def shift_right(labels: torch.Tensor, start: int, pad: int) -> torch.Tensor:
    """T5's `_shift_right(labels)` with device-side ops only: [start, labels[:-1]], -100 replaced by `pad`."""
    first = labels.new_full((labels.shape[0], 1), start)
    shifted = torch.cat([first, labels[:, :-1]], dim=1)
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad)


def decoder_special_ids(model) -> tuple[int, int]:
    """(decoder_start_token_id, pad_token_id) of the T5 inside `model` (a PEFT wrapper's base model too)."""
    from ptuning.engine.fast import core_model

    config = core_model(model).config
    start, pad = config.decoder_start_token_id, config.pad_token_id
    if start is None or pad is None:
        raise ValueError("the model config has no decoder_start_token_id / pad_token_id")
    return int(start), int(pad)


def step_loss(model, batch: dict[str, torch.Tensor], start: int, pad: int) -> torch.Tensor:
    """`model(**batch).loss`, with the decoder inputs made here (see the module docstring) and no cache.

    The attention mask is cloned: OpenDelta's soft prompt grows the mask it is given in place, which must
    not happen to a graph's static input buffer.
    """
    labels = batch["labels"]
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].clone(),
                 decoder_input_ids=shift_right(labels, start, pad), labels=labels, use_cache=False).loss


def undo_failed_capture(device: torch.device, pool, stream) -> str | None:
    """Put back what a failed capture leaves behind, so that training can go on eagerly; None, or what failed.

    When a capture-illegal op invalidates a capture, `torch.cuda.graph`'s exit raises in `capture_end` (at
    cudaStreamEndCapture), before it restores the caller's stream, before the caching allocator stops sending
    the capture stream's allocations to the graph's pool, and before the CUDA generator leaves capture mode
    (PyTorch's CUDAGraph::reset: "the generator, and the allocator could end up in all kinds of weird states").
    Left so, the next eager dropout raises ("Offset increment outside graph capture encountered unexpectedly")
    and `torch.cuda.empty_cache()` fails the allocator's check that no capture is underway: the eager fallback
    would die at its first step. Each part below does nothing harmful where there is nothing to undo (a Python
    error inside a capture that ended normally, or a failure before the capture began).
    """
    problems = []
    torch.cuda.set_stream(stream)
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        torch._C._cuda_endAllocateToPool(index, pool)
    except Exception:  # not recording to it: capture_end got that far (and its graph will release the pool)
        pass
    else:  # the failed capture's hold on the pool, which its graph will never release
        try:
            torch._C._cuda_releasePool(index, pool)
        except Exception as exc:
            problems.append(f"releasing the pool: {one_line(exc)}")
    try:  # a capture that ends normally takes the generator out of capture mode
        with torch.cuda.graph(torch.cuda.CUDAGraph(), capture_error_mode="thread_local"):
            torch.empty(1, device=device).zero_()
    except Exception as exc:
        problems.append(f"an empty capture: {one_line(exc)}")
    torch.cuda.set_stream(stream)
    return "; ".join(problems) or None


class GraphedTrainStep:
    """One optimizer step per call, replayed from a CUDA graph for every batch shape seen before.

    `step(batch)` trains on `batch` (already on the device) and returns its loss as a device tensor of
    its own (not read back: the caller decides when to synchronise).
    """

    def __init__(self, model, optimizer: torch.optim.Optimizer, device: torch.device, precision: str = "bf16",
                 echo: Callable[[str], None] | None = None) -> None:
        self.model, self.optimizer, self.device, self.precision = model, optimizer, device, precision
        self.echo = echo
        self.start, self.pad = decoder_special_ids(model)
        self.capture = device.type == "cuda"
        self.graphs: dict[tuple, tuple[dict[str, torch.Tensor], torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        self.failure: str | None = None
        self.replays = 0
        self.eager_steps = 0
        self.undo_failure: str | None = None
        self._side = torch.cuda.Stream(device) if self.capture else None

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, cache_enabled=False)
        return torch.autocast(device_type=self.device.type, enabled=False)

    def _step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self._autocast():
            loss = step_loss(self.model, batch, self.start, self.pad)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)  # the gradient tensors stay where a graph can find them
        return loss.detach()

    def _eager(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.eager_steps += 1
        if self._side is None:
            return self._step(batch)
        self._side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._side):
            loss = self._step(batch)
        torch.cuda.current_stream(self.device).wait_stream(self._side)
        return loss

    def _record(self, fn: Callable[[], torch.Tensor]):
        """(graph, output): `fn`'s kernels captured, not run (its output tensor is filled by each replay)."""
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        # the warm-up step's activations were cached for the side stream, where nothing else will reuse them; handed
        # back now, they do not stay reserved beside the graph's own pool (and the evaluation's, on the main stream)
        torch.cuda.empty_cache()
        if self.pool is None:  # made here, not by the first capture, so that a failed capture can name its pool
            self.pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.current_stream(self.device)
        try:
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                out = fn()
        except BaseException:
            self.undo_failure = undo_failed_capture(self.device, self.pool, stream)
            raise
        return graph, out

    def _capture(self, key: tuple, batch: dict[str, torch.Tensor]) -> None:
        static = {k: v.detach().clone() for k, v in batch.items()}
        try:
            graph, loss = self._record(lambda: self._step(static))
        except Exception as exc:  # an optimisation: say why once, then train eagerly
            self.failure = one_line(exc)
            cause = exc.__context__  # the op that broke the capture; `exc` is then capture_end's "previous error" message
            if cause is not None and not isinstance(cause, KeyboardInterrupt):
                self.failure += f" (in the capture: {one_line(cause)})"
            if self.undo_failure:
                self.failure += f"; undoing it failed: {self.undo_failure}"
            if self.echo:
                self.echo(f"CUDA graph capture failed ({self.failure}); training eagerly")
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.optimizer.zero_grad(set_to_none=False)
            return
        self.pool = graph.pool()
        self.graphs[key] = (static, graph, loss)

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(batch.items()))
        entry = self.graphs.get(key)
        if entry is None:
            loss = self._eager(batch)  # a real step; it also warms this shape up for the capture
            if self.capture and self.failure is None:
                self._capture(key, batch)
            return loss
        static, graph, loss = entry
        for k, v in batch.items():
            static[k].copy_(v, non_blocking=True)
        graph.replay()
        self.replays += 1
        return loss.clone()  # the next replay of any graph may reuse this memory

    def describe(self) -> dict:
        return {"graphs": len(self.graphs), "replays": self.replays, "eager_steps": self.eager_steps, "failure": self.failure}

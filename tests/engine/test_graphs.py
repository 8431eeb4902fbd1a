"""The CUDA-graph training step (ptuning/engine/graphs.py), on CPU: what a capture needs is checked without a GPU.

* `shift_right` makes T5's decoder inputs, and `step_loss` gives every job's method the loss `model(**batch)`
  gives, exactly (same dropout draws).
* The step makes no host synchronisation and no host-to-device copy, for every method: the ops that do
  (`.item()`, `nonzero`, a Python scalar lifted into a tensor and copied) are caught by a dispatch mode, and
  the same mode catches T5's own `_shift_right` and training-time KV cache, the spots that made whole-step
  capture fail on 4.57.6.
* `GraphedTrainStep` (eager on CPU) trains like the fast path's eager loop through `train_epoch` (to float
  rounding: without the KV cache the backward sums some gradient terms in another order).
"""

from __future__ import annotations

import dataclasses
import random
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import T5ForConditionalGeneration

from ptuning import data
from ptuning.engine import fast
from ptuning.engine.base import Plan, make_plan
from ptuning.engine.graphs import GraphedTrainStep, decoder_special_ids, shift_right, step_loss
from ptuning.engine.faithful import make_optimizer
from ptuning.methods import build_method
from ptuning.settings import load_all_jobs, load_job
from ptuning.testing.tiny import tiny_t5_config
from tests.conftest import JOBS

VOCAB = 128
CPU = torch.device("cpu")
TRAINED = [job for job in load_all_jobs(JOBS) if build_method(job.method, job.implementation, job.knobs).trains]
#: aten ops that synchronise with the host or copy host data to the device when the tensors are on a GPU
UNSAFE = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "_unique2", "unique_consecutive",
          "lift_fresh", "lift_fresh_copy", "_pin_memory"}


class CaptureUnsafe(TorchDispatchMode):
    """Records every capture-unsafe op run inside it, with the line of Python that ran it."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in UNSAFE:
            frames = [f for f in traceback.extract_stack() if "/torch/" not in f.filename and "test_graphs" not in f.filename]
            self.found.append((name, f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno} {frames[-1].line}" if frames else "?"))
        return func(*args, **(kwargs or {}))


def _model(job, seed=0):
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(tiny_t5_config(VOCAB))
    method = build_method(job.method, job.implementation, job.knobs)
    return method.apply(model).train(), method


def _batch(n_placeholders, n=6, seed=0):
    rng = random.Random(seed)
    pairs = [([0] * n_placeholders + [rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 20))] + [1],
              [rng.choice([5, 6]), 1] if i % 2 else [7, 1]) for i in range(n)]
    return fast.BucketCollator(0, (32,), label_length=4)(pairs)


def test_shift_right_equals_t5s():
    model = T5ForConditionalGeneration(tiny_t5_config(VOCAB))
    labels = torch.tensor([[5, 1, -100, -100], [6, 7, 1, -100], [-100, 3, 4, 1]])
    start, pad = decoder_special_ids(model)
    assert torch.equal(shift_right(labels, start, pad), model._shift_right(labels))


@pytest.mark.parametrize("job", TRAINED, ids=lambda j: j.name)
def test_step_loss_equals_the_models_loss_and_is_capture_safe(job):
    model, method = _model(job)
    batch = _batch(method.placeholder_tokens())
    torch.manual_seed(1)
    expected = model(**{k: v.clone() for k, v in batch.items()}).loss
    start, pad = decoder_special_ids(model)
    before = {k: v.clone() for k, v in batch.items()}
    torch.manual_seed(1)
    with CaptureUnsafe() as mode:
        loss = step_loss(model, batch, start, pad)
        loss.backward()
    assert torch.equal(loss, expected)  # same decoder inputs, same dropout draws: the same loss, bit for bit
    assert mode.found == []
    assert all(torch.equal(batch[k], before[k]) for k in batch)  # a graph's static inputs are left as they were
    assert any(p.grad is not None for _, p in method.trainable_parameters(model))


@pytest.mark.parametrize("job", TRAINED, ids=lambda j: j.name)
def test_step_runs_on_the_meta_device(job):
    """On `meta` tensors have shapes and no values: a host tensor flowing into the step (other than a 0-dim scalar,
    which a GPU kernel takes as an argument) or a value read back would raise. Complements the dispatch check."""
    model, method = _model(job)
    start, pad = decoder_special_ids(model)
    model.to("meta")
    batch = {k: v.to("meta") for k, v in _batch(method.placeholder_tokens()).items()}
    loss = step_loss(model, batch, start, pad)
    loss.backward()
    assert loss.device.type == "meta" and loss.shape == ()
    assert all(p.grad is not None and p.grad.device.type == "meta" for _, p in method.trainable_parameters(model))


def test_the_detector_finds_t5s_own_shift_right_and_training_cache():
    """Without `step_loss`, the forward lifts host data into tensors (host-to-device copies on a GPU)."""
    model, _ = _model(load_job("full_ft", JOBS))
    with CaptureUnsafe() as mode:
        model(**_batch(0)).loss.backward()
    assert any(name.startswith("lift_fresh") and "decoder_start_token_id" in where for name, where in mode.found), mode.found
    assert any(name.startswith("lift_fresh") and "torch.tensor([]" in where for name, where in mode.found), mode.found
    with CaptureUnsafe() as mode:
        torch.tensor([1.0, 2.0]).sum().item()
    assert [name for name, _ in mode.found] == ["lift_fresh", "_local_scalar_dense"]


def _train(use_step: bool, job_name: str):
    job = load_job(job_name, JOBS)
    model, method = _model(job, seed=3)
    rng = random.Random(0)
    n = method.placeholder_tokens()
    pairs = [([0] * n + [rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 40))] + [1], [5 + i % 2, 1]) for i in range(20)]
    optimizer = make_optimizer([p for _, p in method.trainable_parameters(model)], 1e-3, 0.01)
    loader = torch.utils.data.DataLoader(pairs, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(0),
                                         collate_fn=fast.BucketCollator(0, (32, 64), label_length=3))
    plan = Plan(fast=True, precision="fp32", compile=False, graphs=use_step, eval_batch_size=512, pin_memory=False,
                     fused_adamw=False, sync_every=1)
    step = GraphedTrainStep(model, optimizer, CPU, "fp32") if use_step else None
    losses: list[float] = []
    torch.manual_seed(5)
    mean = fast.train_epoch(model, loader, optimizer, CPU, plan, on_step=lambda s, v: losses.append(v), step=step)
    assert mean == pytest.approx(sum(losses) / len(losses))
    if step is not None:
        assert step.describe() == {"graphs": 0, "replays": 0, "eager_steps": 4, "failure": None}  # CPU: nothing captured
    return losses, [p.detach().clone() for _, p in method.trainable_parameters(model)]


@pytest.mark.parametrize("job_name", ["full_ft", "lora_8_peft", "soft_prompt_10_opendelta"])
def test_graphed_step_trains_like_the_eager_fast_loop(job_name):
    eager_losses, eager_params = _train(False, job_name)
    step_losses, step_params = _train(True, job_name)
    assert len(step_losses) == 4
    assert step_losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(eager_params, step_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_stop_request_after_a_graphed_step_reports_the_applied_steps():
    from ptuning.engine import StopEpoch

    job = load_job("lora_8", JOBS)
    model, method = _model(job)
    optimizer = make_optimizer([p for _, p in method.trainable_parameters(model)], 1e-3, 0.01)
    pairs = [([3, 4, 5, 1], [5, 1])] * 12
    loader = torch.utils.data.DataLoader(pairs, batch_size=4, collate_fn=data.Collator(0))
    plan = dataclasses.replace(make_plan(job.override(speed="fast").settings, CPU), graphs=True)
    step = GraphedTrainStep(model, optimizer, CPU, "fp32")
    calls = []
    with pytest.raises(StopEpoch) as stopped:
        fast.train_epoch(model, loader, optimizer, CPU, plan, step=step, should_stop=lambda: calls.append(1) or len(calls) == 2)
    assert stopped.value.steps == 2 and step.eager_steps == 2


class _ReplayedGraph:
    """A CPU stand-in for a captured graph: `replay()` runs the recorded step again and fills the same output."""

    def __init__(self, fn, out):
        self.fn, self.out = fn, out

    def replay(self):
        self.out.copy_(self.fn())

    def pool(self):
        return "pool"


def _fake_capture(monkeypatch, fail: Exception | None = None):
    """Make GraphedTrainStep capture on CPU: recording runs nothing (as on a GPU), each replay runs the step."""
    records = []

    def record(self, fn):
        records.append(fn)
        if fail is not None:
            raise fail
        out = torch.zeros(())
        return _ReplayedGraph(fn, out), out

    monkeypatch.setattr(GraphedTrainStep, "_record", record)
    return records


def _train_with(monkeypatch_capture, job_name="lora_8", n_reviews=20):
    job = load_job(job_name, JOBS)
    model, method = _model(job, seed=3)
    rng = random.Random(0)
    pairs = [([rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 40))] + [1], [5 + i % 2, 1]) for i in range(n_reviews)]
    optimizer = make_optimizer([p for _, p in method.trainable_parameters(model)], 1e-3, 0.01)
    loader = torch.utils.data.DataLoader(pairs, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(0),
                                         collate_fn=fast.BucketCollator(0, (32, 64), label_length=3))
    plan = Plan(fast=True, precision="fp32", compile=False, graphs=True, eval_batch_size=512, pin_memory=False,
                     fused_adamw=False, sync_every=1)
    messages: list[str] = []
    step = GraphedTrainStep(model, optimizer, CPU, "fp32", messages.append)
    step.capture = monkeypatch_capture
    losses: list[float] = []
    torch.manual_seed(5)
    for _ in range(2):  # two epochs: the graphs of the first are replayed in the second
        fast.train_epoch(model, loader, optimizer, CPU, plan, on_step=lambda s, v: losses.append(v), step=step)
    return losses, [p.detach().clone() for _, p in method.trainable_parameters(model)], step, messages


def test_replayed_steps_read_each_new_batch_and_train_like_eager_steps(monkeypatch):
    eager_losses, eager_params, eager_step, _ = _train_with(False)
    records = _fake_capture(monkeypatch)
    losses, params, step, messages = _train_with(True)
    shapes = len(step.graphs)
    assert shapes >= 2 and len(records) == shapes  # one capture per batch shape (buckets 32/64, a short last batch)
    assert step.eager_steps == shapes and step.replays == len(losses) - shapes == 8 - shapes
    assert losses == eager_losses  # each replay trained on its own batch, copied into the static inputs
    assert all(torch.equal(a, b) for a, b in zip(params, eager_params)) and messages == []


def test_a_failed_capture_says_why_once_and_training_goes_on_eagerly(monkeypatch):
    eager_losses, eager_params, _, _ = _train_with(False)
    records = _fake_capture(monkeypatch, fail=RuntimeError("operation not permitted when stream is capturing\nmore"))
    losses, params, step, messages = _train_with(True)
    assert len(records) == 1 and step.graphs == {} and step.replays == 0 and step.eager_steps == 8
    assert step.failure == "RuntimeError: operation not permitted when stream is capturing"
    assert messages == ["CUDA graph capture failed (RuntimeError: operation not permitted when stream is capturing); training eagerly"]
    assert losses == eager_losses and all(torch.equal(a, b) for a, b in zip(params, eager_params))


def test_a_run_on_the_graphed_path_end_to_end(monkeypatch, tmp_path, tiny_model_dir, tiny_data_dir):
    """`ptuning run` with the plan's graphs on (as on CUDA) and captures stood in for on CPU: the runner builds the
    step, the loader pads to buckets, replays train, and the result JSON says what the graphs did."""
    import json

    from click.testing import CliRunner

    from ptuning.cli import main

    from ptuning.engine import base

    real_plan, real_init = base.make_plan, GraphedTrainStep.__init__
    monkeypatch.setattr(base, "make_plan", lambda settings, device, echo=None: dataclasses.replace(real_plan(settings, device, echo),
                                                                                                  graphs=True, buckets=True))

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.capture = True

    monkeypatch.setattr(GraphedTrainStep, "__init__", init)
    records = _fake_capture(monkeypatch)
    out = tmp_path / "r"
    result = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "run", "lora_8", "--model", str(tiny_model_dir), "--dataset",
                                       str(tiny_data_dir), "--epochs", "2", "--train-limit", "24", "--eval-limit", "8", "--device", "cpu",
                                       "--speed", "fast", "--output-dir", str(out)], env={"HF_HUB_OFFLINE": "1"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "lora_8" / "seed0" / "result.json").read_text())
    graphs = record["speed"]["cuda_graphs"]
    assert record["speed"]["graphs"] is True and graphs["failure"] is None
    assert graphs["graphs"] == len(records) >= 1 and graphs["eager_steps"] == graphs["graphs"]
    # 2 epochs x ceil(24 / batch 32) = 2 steps: the first captures its shape, the second replays it
    assert graphs["replays"] + graphs["eager_steps"] == 2 * -(-24 // record["config"]["batch_size"])
    assert all(e["train_loss"] is not None and e["train_loss"] == e["train_loss"] for e in record["epochs"])


class _FakeCuda:
    """torch.cuda's capture calls on CPU, recorded. A capture whose body raises fails as on a GPU when the capture was
    invalidated: `capture_end` raises a new error (the body's as its context) and leaves the caller's stream, the
    allocator's routing into the pool and the generator's capture mode as they were inside the capture.
    `ends_normally`: the body's error passes through a capture that ended cleanly (a Python error in it)."""

    def __init__(self, monkeypatch, ends_normally=False):
        import contextlib

        self.stream, self.recording, self.generator_capturing = "main", set(), False
        self.captures, self.released, self.pools = [], [], 0

        @contextlib.contextmanager
        def graph(cuda_graph, pool=None, stream=None, capture_error_mode="global"):
            assert capture_error_mode == "thread_local"
            self.captures.append(pool)
            pool = pool if pool is not None else ("internal", len(self.captures))
            before, self.stream = self.stream, "capture"
            self.recording.add(pool)
            self.generator_capturing = True
            try:
                yield
            except Exception:
                if not ends_normally:
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
                self.recording.discard(pool)
                self.generator_capturing, self.stream = False, before
                raise
            self.recording.discard(pool)
            self.generator_capturing, self.stream = False, before

        def end_allocate(index, pool):
            assert index == 0
            if pool not in self.recording:
                raise RuntimeError("endAllocatePool: not currently recording to mempool_id")
            self.recording.discard(pool)

        def handle():
            self.pools += 1
            return (0, self.pools)

        def set_stream(stream):
            self.stream = stream

        for name, value in {"graph": graph, "CUDAGraph": lambda: object(), "synchronize": lambda device=None: None,
                            "empty_cache": lambda: None, "graph_pool_handle": handle, "current_device": lambda: 0,
                            "current_stream": lambda device=None: self.stream, "set_stream": set_stream}.items():
            monkeypatch.setattr(torch.cuda, name, value)
        monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", end_allocate, raising=False)
        monkeypatch.setattr(torch._C, "_cuda_releasePool", lambda index, pool: self.released.append(pool), raising=False)


def _step_for_capture():
    job = load_job("lora_8", JOBS)
    model, method = _model(job)
    optimizer = make_optimizer([p for _, p in method.trainable_parameters(model)], 1e-3, 0.01)
    messages: list[str] = []
    return GraphedTrainStep(model, optimizer, CPU, "fp32", messages.append), messages


def test_a_failed_capture_is_undone_so_that_eager_training_can_go_on(monkeypatch):
    """On a GPU an invalidated capture leaves the capture stream current, the allocator routing into the graph's pool
    (torch.cuda.empty_cache() then fails an assertion) and the CUDA generator in capture mode (the next eager dropout
    raises): `_record` puts all three back, and the failure names the op that broke the capture."""
    cuda = _FakeCuda(monkeypatch)
    step, messages = _step_for_capture()

    def illegal(batch):
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(step, "_step", illegal)
    step._capture(("key",), _batch(0))
    assert cuda.stream == "main" and cuda.recording == set() and not cuda.generator_capturing
    assert cuda.released == [(0, 1)] and cuda.captures == [(0, 1), None]  # the failed capture, then an empty one
    assert step.graphs == {} and step.undo_failure is None
    assert step.failure == ("RuntimeError: CUDA error: operation failed due to a previous error during capture "
                            "(in the capture: RuntimeError: operation not permitted when stream is capturing)")
    assert messages == [f"CUDA graph capture failed ({step.failure}); training eagerly"]


def test_undoing_a_capture_that_ended_normally_releases_nothing(monkeypatch):
    cuda = _FakeCuda(monkeypatch, ends_normally=True)
    step, _ = _step_for_capture()

    def broken():
        raise ValueError("a Python error")

    with pytest.raises(ValueError):
        step._record(broken)
    assert cuda.stream == "main" and cuda.recording == set() and not cuda.generator_capturing
    assert cuda.released == [] and step.undo_failure is None


def test_captures_share_one_pool_made_before_the_first(monkeypatch):
    cuda = _FakeCuda(monkeypatch)
    step, _ = _step_for_capture()
    out = torch.zeros(())
    for _ in range(2):
        _, result = step._record(lambda: out)
        assert result is out
    assert cuda.captures == [(0, 1), (0, 1)] and cuda.pools == 1 and cuda.released == [] and cuda.stream == "main"

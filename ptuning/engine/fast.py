"""The fast path: the same training math and the same greedy predictions as the exercise loop, less overhead.

What it changes, and what it does not (see docs/speed.md):

* Evaluation (`fast_predict`): inputs sorted by length into large batches (`fast_eval_batch_size`), one
  encoder pass, then a hand-written greedy loop over the decoder's KV cache, argmax over the vocabulary,
  stopping when every sequence has produced </s> or `max_length` is reached; predictions are put back in
  dataset order. On CUDA a background thread makes (and pins) the next batches while the GPU decodes.
  It computes what `model.generate(max_length, do_sample=False, num_beams=1)` computes (same forward calls,
  same argmax), so its token ids are the same; tests/test_fast.py checks that for every method.
  A model whose generation config would make `generate` do more than plain greedy argmax (repetition penalty,
  forced tokens, ...) or a PEFT prompt-learning wrapper falls back to `generate` (`fallback_reason`).
* Training (`train_epoch`): bf16 autocast where `precision` resolves to bf16, pinned host memory and
  non-blocking copies, no host sync per step on CUDA (losses are read back every `SYNC_EVERY` steps),
  fused AdamW on CUDA (the same AdamW update in one kernel), and on CUDA, by default, the whole step
  (forward, backward, update) replayed as a CUDA graph per static length bucket (`ptuning.engine.graphs`,
  `cuda_graphs: true`). Optional, CUDA only and off by default: `torch.compile(mode="reduce-overhead")`
  over the same buckets (`compile: true`, used instead of the graphs).
* Unchanged: batch size, optimizer and its hyper-parameters, learning rates, number of steps, data order,
  dropout in train mode.

`FastEngine` puts these together behind the engine interface (`ptuning.engine.base.Engine`).
"""

from __future__ import annotations

import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import torch

from ptuning.data import IGNORE_INDEX, Collator
from ptuning.engine.base import Engine, Plan, StopEpoch, accuracy, autocast, check_loss
from ptuning.errors import one_line
#: the fast evaluation's batch (`fast_eval_batch_size`): sorted batches of 256 reviews of up to 256 tokens keep a
#: GPU busy, and the encoder's attention temporaries grow with the batch ([batch, 8 heads, 256, 256] in fp32 for
#: the softmax and the position bias plus mask); on CPU in fp32 a t5-small greedy pass held about 10 MiB more per
#: review of 256 tokens (1.24 GiB at 128 reviews, 0.58 at 64), so 512 would add about 5 GiB beside the training
#: step's memory, against the 8 GB a job may hold
FAST_EVAL_BATCH_SIZE = 256
#: generation-config fields that must hold their neutral value for greedy argmax == generate
_NEUTRAL = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (None, False),
    "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
    "diversity_penalty": (None, 0.0),
    "encoder_repetition_penalty": (None, 1.0),
    "guidance_scale": (None, 1.0),
    "watermarking_config": (None,),
    "max_new_tokens": (None,),
}


# ---------------------------------------------------------------------------------------------
# evaluation: exact greedy decoding with the KV cache


def core_model(model):
    """The module whose forward runs the adapted T5: a PEFT LoRA wrapper's base model, else the model."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and hasattr(model, "peft_config"):
        return get_base()  # LoRA layers are injected into the base model's modules
    return model


def fallback_reason(model) -> str | None:
    """Why the greedy loop would not reproduce `generate` for this model (None: it does)."""
    active = getattr(model, "active_peft_config", None)
    if active is not None and getattr(active, "is_prompt_learning", False):
        return "PEFT prompt learning changes generate's inputs"
    core = core_model(model)
    config = getattr(core, "config", None)
    if config is None or not getattr(config, "is_encoder_decoder", False):
        return "not an encoder-decoder model"
    gc = getattr(core, "generation_config", None)
    if gc is not None:
        for key, neutral in _NEUTRAL.items():
            value = getattr(gc, key, None)
            if value not in neutral:
                return f"generation_config.{key} = {value!r}"
    return None


def _special_ids(model) -> tuple[int, list[int], int]:
    core = core_model(model)
    gc = getattr(core, "generation_config", None)
    cfg = core.config

    def pick(name):
        value = getattr(gc, name, None) if gc is not None else None
        return value if value is not None else getattr(cfg, name, None)

    start, eos, pad = pick("decoder_start_token_id"), pick("eos_token_id"), pick("pad_token_id")
    if start is None:
        raise ValueError("the model config has no decoder_start_token_id")
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if pad is None:
        pad = eos[0] if eos else 0
    return int(start), [int(e) for e in eos], int(pad)


def _new_cache(core):
    """An empty self-/cross-attention cache, as `generate` starts with (None where this transformers has none)."""
    try:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    except ImportError:  # pragma: no cover - older transformers: the model builds its own (legacy) cache
        return None
    try:
        return EncoderDecoderCache(DynamicCache(config=core.config), DynamicCache(config=core.config))
    except TypeError:  # pragma: no cover - DynamicCache without a config argument
        return EncoderDecoderCache(DynamicCache(), DynamicCache())


@torch.no_grad()
def greedy_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_length: int = 5) -> torch.Tensor:
    """Token ids of greedy decoding, the same as `model.generate(max_length, do_sample=False, num_beams=1)`.

    The first call runs the encoder and the first decoder step together; later calls reuse the encoder
    output and the decoder's KV cache. A finished sequence is continued with `pad`, and the loop stops as
    soon as every sequence has produced an end token, so the output is `generate`'s, column for column.
    The attention mask is cloned: OpenDelta's soft prompt grows the mask it is given in place, and the
    grown clone is what the later steps must see.
    """
    core = core_model(model)
    start, eos, pad = _special_ids(model)
    mask = attention_mask.clone()
    n = input_ids.shape[0]
    decoder_ids = torch.full((n, 1), start, dtype=torch.long, device=input_ids.device)
    eos_t = torch.tensor(eos, dtype=torch.long, device=input_ids.device)
    out = core(input_ids=input_ids, attention_mask=mask, decoder_input_ids=decoder_ids, past_key_values=_new_cache(core),
               use_cache=True, return_dict=True)
    encoder_outputs = (out.encoder_last_hidden_state,)
    columns = [decoder_ids]
    unfinished = torch.ones(n, dtype=torch.bool, device=input_ids.device)
    for step in range(1, max_length):
        next_ids = out.logits[:, -1, :].float().argmax(dim=-1)
        next_ids = torch.where(unfinished, next_ids, torch.full_like(next_ids, pad))
        columns.append(next_ids[:, None])
        if eos:
            unfinished &= ~torch.isin(next_ids, eos_t)
        if step == max_length - 1 or not bool(unfinished.any()):
            break
        out = core(
            encoder_outputs=encoder_outputs,
            attention_mask=mask,
            decoder_input_ids=next_ids[:, None],
            past_key_values=out.past_key_values,
            use_cache=True,
            return_dict=True,
        )
    return torch.cat(columns, dim=1)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (so a memory problem shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


#: how many evaluation batches the background thread makes ahead of the decode
EVAL_AHEAD = 2


def eval_batches(inputs: Sequence[list[int]], chunks: list[list[int]], pad_id: int, device: torch.device,
                 background: bool | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """The evaluation batches, in `chunks` order; pinned on CUDA.

    `background` (default: on CUDA) makes the next `EVAL_AHEAD` batches in a thread while the GPU decodes the
    current one. A thread, not a DataLoader worker process: a worker is forked anew for every evaluation, and
    forking a process that holds a model and a CUDA context took about 0.1 s (on a CPU machine, 300 MB resident),
    paid every epoch and, in the bench, scaled with the reviews into the projection as if it were per review.
    Making a batch is a few milliseconds of numpy work, done while the decode waits for the GPU.
    """
    collate = Collator(pad_id)
    pin = device.type == "cuda"

    def make(chunk: list[int]) -> dict[str, torch.Tensor]:
        batch = collate([(inputs[i], [1]) for i in chunk])
        return {k: v.pin_memory() for k, v in batch.items()} if pin else batch

    if not (pin if background is None else background):
        for chunk in chunks:
            yield make(chunk)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ptuning-eval-batches") as pool:
        pending = deque(pool.submit(make, chunk) for chunk in chunks[:EVAL_AHEAD])
        for index in range(len(chunks)):
            batch = pending.popleft().result()
            if index + EVAL_AHEAD < len(chunks):
                pending.append(pool.submit(make, chunks[index + EVAL_AHEAD]))
            yield batch


@torch.no_grad()
def fast_predict(model, dataset, tokenizer, device: torch.device, batch_size: int = FAST_EVAL_BATCH_SIZE, max_length: int = 5,
                 precision: str = "fp32", description: str = "eval", background: bool | None = None) -> tuple[list[str], list[str]]:
    """(predicted words, gold words) in dataset order; the same predictions as `evaluate.predict`.

    `dataset` is an `ExamplesDataset` (anything with `.inputs` and `.targets` lists, or indexable
    (input_ids, target_ids) pairs). Falls back to `generate` (same batching) where `fallback_reason` says so.
    `background`: make the next batches in a thread (see `eval_batches`; default: on CUDA).
    """
    from tqdm.auto import tqdm

    inputs = getattr(dataset, "inputs", None)
    targets = getattr(dataset, "targets", None)
    if inputs is None or targets is None:
        pairs = [dataset[i] for i in range(len(dataset))]
        inputs, targets = [x for x, _ in pairs], [y for _, y in pairs]
    reason = fallback_reason(model)
    chunks = length_sorted_batches([len(x) for x in inputs], batch_size)
    batches = eval_batches(inputs, chunks, tokenizer.pad_token_id, device, background)
    predictions: list[str | None] = [None] * len(inputs)
    was_training = model.training
    model.eval()
    try:
        for chunk, batch in tqdm(zip(chunks, batches), total=len(chunks), desc=description, leave=False, dynamic_ncols=True,
                                 disable=None):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}
            with autocast(device, precision):
                if reason is None:
                    out = greedy_decode(model, batch["input_ids"], batch["attention_mask"], max_length)
                else:
                    out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].clone(),
                                         max_length=max_length, do_sample=False, num_beams=1)
            for i, text in zip(chunk, tokenizer.batch_decode(out, skip_special_tokens=True)):
                predictions[i] = text
    finally:
        model.train(was_training)
    golds = tokenizer.batch_decode([[t for t in y if t != IGNORE_INDEX] for y in targets], skip_special_tokens=True)
    return predictions, golds  # type: ignore[return-value]


def evaluate(model, dataset, tokenizer, label_words: list[str], device: torch.device, batch_size: int = FAST_EVAL_BATCH_SIZE,
             max_length: int = 5, precision: str = "fp32", description: str = "eval") -> float:
    predictions, golds = fast_predict(model, dataset, tokenizer, device, batch_size, max_length, precision, description)
    return accuracy(predictions, golds, label_words)


# ---------------------------------------------------------------------------------------------
# training: length buckets, loaders, optimizer, the epoch


def default_buckets(max_length: int, step: int = 64) -> tuple[int, ...]:
    """Static input lengths to pad to: multiples of `step` up to `max_length` (64/128/192/256 at 256)."""
    buckets = list(range(step, max_length, step)) + [max_length]
    return tuple(sorted(set(buckets)))


class BucketCollator(Collator):
    """Right padding to the smallest bucket length that holds the batch's longest input.

    The tokens, the attention on real tokens and the labels are the dynamic collator's; only the number of
    pad columns differs. Labels are padded to a fixed `label_length` too (with -100), so the decoder shape
    is static as well. An input longer than the largest bucket is padded to its own length.
    """

    def __init__(self, pad_id: int, buckets: Sequence[int], label_length: int | None = None):
        super().__init__(pad_id)
        self.buckets = tuple(sorted(buckets))
        self.label_length = label_length

    def __call__(self, batch):
        length = max(len(x) for x, _ in batch)
        target = next((b for b in self.buckets if b >= length), length)
        return self.pad(batch, target, max(max(len(y) for _, y in batch), self.label_length or 0))


def make_optimizer(params, lr: float, weight_decay: float, the_plan: Plan) -> torch.optim.Optimizer:
    """torch.optim.AdamW with PyTorch defaults; on the fast path on CUDA its fused kernel (same update),
    capturable (step counter on the device) when the step is a CUDA graph."""
    params = list(params)
    if the_plan.fused_adamw and all(p.is_cuda and p.dtype.is_floating_point for p in params):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True, capturable=the_plan.graphs)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class LossFn:
    """model(**batch).loss, optionally through torch.compile(mode="reduce-overhead") (CUDA only).

    If compiling or running the compiled function fails, it says so once and continues eagerly.
    """

    def __init__(self, model, compile: bool = False, echo: Callable[[str], None] | None = None):
        self.model = model
        self.echo = echo
        self.compiled = None
        if compile:
            if not torch.cuda.is_available():
                raise ValueError("torch.compile is only used on CUDA")
            self.compiled = torch.compile(self._eager, mode="reduce-overhead", dynamic=False)

    def _eager(self, batch):
        return self.model(**batch).loss

    def __call__(self, batch):
        if self.compiled is not None:
            try:
                # a copy: reduce-overhead replays CUDA graphs whose outputs the next step overwrites (reading one later
                # raises), and train_epoch reads its losses back every `sync_every` steps
                return self.compiled(batch).clone()
            except Exception as exc:  # compile is an optimisation: never lose a run to it
                message = f"torch.compile failed ({one_line(exc)}); continuing eagerly"
                (self.echo or warnings.warn)(message)
                self.compiled = None
        return self._eager(batch)


def train_epoch(model, loader, optimizer, device: torch.device, the_plan: Plan, description: str = "train",
                on_step: Callable[[int, float], None] | None = None, loss_fn: LossFn | None = None,
                start_step: int = 0, start_total: float = 0.0, should_stop: Callable[[], bool] | None = None,
                step: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None) -> float:
    """One pass over `loader` on the fast path; returns the mean training loss.

    Same update as `ptuning.engine.faithful.train_epoch`. On CUDA the losses are read back every `sync_every` steps,
    so the CPU queues work ahead of the GPU; a non-finite loss then raises `NonFiniteLoss` naming its step,
    up to `sync_every - 1` optimizer steps after it happened (the run is lost either way).
    `start_step`/`start_total`/`should_stop` resume and stop an epoch exactly as in `ptuning.engine.faithful.train_epoch`:
    before raising `StopEpoch`, every pending loss is read back, so the reported step is the last one applied.
    `step` (a `ptuning.engine.graphs.GraphedTrainStep`) does forward, backward and update in one call, used instead
    of `loss_fn`; its loss is checked after the update, also on CPU.
    """
    from tqdm.auto import tqdm

    model.train()
    loss_fn = loss_fn or LossFn(model)
    total, steps = start_total, start_step
    pending: list[torch.Tensor] = []
    bar = tqdm(loader, desc=description, leave=False, dynamic_ncols=True, disable=None)

    def flush():
        nonlocal total, steps
        if not pending:
            return
        values = torch.stack(pending).float().cpu().tolist()
        pending.clear()
        for value in values:
            steps += 1
            check_loss(value, steps, description)
            total += value
            if on_step is not None:
                on_step(steps, value)
        bar.set_postfix(loss=f"{values[-1]:.4f}", refresh=False)

    for index, batch in enumerate(bar):
        if index < start_step:  # resuming: same shuffle order, skip the batches already trained on
            continue
        batch = {k: v.to(device, non_blocking=the_plan.pin_memory) for k, v in batch.items()}
        if step is not None:  # forward, backward and update in one call; its loss is checked after the update
            pending.append(step(batch))
        else:
            with autocast(device, the_plan.precision):
                loss = loss_fn(batch)
            if the_plan.sync_every <= 1:  # CPU: check before the update, like the faithful loop
                pending.append(loss.detach())
                flush()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if the_plan.sync_every > 1:
                pending.append(loss.detach())
        if len(pending) >= the_plan.sync_every:
            flush()
        if should_stop is not None and should_stop():
            flush()
            raise StopEpoch(steps, total)
    flush()
    return total / max(steps, 1)


class FastEngine(Engine):
    """The fast path: static length buckets and CUDA graphs (or torch.compile) on CUDA, bf16 autocast, fused AdamW,
    losses read back every `sync_every` steps, and the KV-cached greedy decode over length-sorted batches."""

    name = "fast"

    def __init__(self, plan: Plan, settings, device: torch.device, echo: Callable[[str], None] | None = None) -> None:
        super().__init__(plan, settings, device, echo)
        self._model = self._optimizer = None
        self._loss_fn: LossFn | None = None
        self._step = None  # a GraphedTrainStep, with `graphs`

    def collator(self, dataset, pad_id: int):
        if not self.plan.buckets:
            return Collator(pad_id)
        # static shapes: a few input lengths, one label length
        label_length = max(len(y) for y in dataset.targets) if hasattr(dataset, "targets") else None
        return BucketCollator(pad_id, default_buckets(self.max_length), label_length)

    def optimizer(self, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return make_optimizer(params, lr, weight_decay, self.plan)

    def _machinery(self, model, optimizer) -> None:
        """The loss function and (with graphs) the graphed step of this model and optimizer, made once."""
        if model is self._model and optimizer is self._optimizer:
            return
        from ptuning.engine.graphs import GraphedTrainStep

        self._model, self._optimizer = model, optimizer
        self._loss_fn = LossFn(model, self.plan.compile, self.echo)
        self._step = GraphedTrainStep(model, optimizer, self.device, self.plan.precision, self.echo) if self.plan.graphs else None

    def train_epoch(self, model, loader, optimizer, *, description="train", start_step=0, start_total=0.0, should_stop=None,
                    on_step=None) -> float:
        self._machinery(model, optimizer)
        return train_epoch(model, loader, optimizer, self.device, self.plan, description, on_step=on_step, loss_fn=self._loss_fn,
                           start_step=start_step, start_total=start_total, should_stop=should_stop, step=self._step)

    def predict(self, model, dataset, tokenizer, description="eval"):
        return fast_predict(model, dataset, tokenizer, self.device, self.plan.eval_batch_size, self.generate_max_length,
                            self.plan.precision, description)

    def evaluate(self, model, dataset, tokenizer, label_words, description="eval") -> float:
        return accuracy(*self.predict(model, dataset, tokenizer, description), label_words)

    def describe(self) -> dict:
        graphs = {"cuda_graphs": self._step.describe()} if self._step is not None else {}
        return {**self.plan.describe(), **graphs}

    def summary(self) -> str:
        plan = self.plan
        parts = [plan.precision]
        if plan.compile:
            parts.append("torch.compile over length buckets")
        elif plan.graphs:
            parts.append("CUDA graphs over length buckets")
        else:
            parts.append("eager, dynamic padding")
        if plan.fused_adamw:
            parts.append("fused AdamW")
        if plan.sync_every > 1:
            parts.append(f"loss read every {plan.sync_every} steps")
        parts.append(f"KV-cached greedy, sorted batches of {plan.eval_batch_size}")
        return ", ".join(parts)

    @property
    def graphed_step(self):
        """The GraphedTrainStep in use (None without graphs, or before training)."""
        return self._step

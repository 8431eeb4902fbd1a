"""What both engines share: the plan (which path, which precision), the interface, the errors that end an epoch,
autocast, and accuracy.

An engine is how a run trains and evaluates, not what: the model, the method, the data and the optimizer's
hyper-parameters are the runner's. `make_plan` turns a job's settings and the device into a `Plan`:
`speed: auto` is the fast path on CUDA and the faithful one on CPU; `precision: auto` is bf16 on the fast path on
CUDA and fp32 otherwise; `speed: faithful` with `precision: auto` is exactly the exercise's loop.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar

import torch

from ptuning.errors import PtuningError

#: on CUDA, the fast path reads the losses back (and checks them) every this many steps instead of every step
SYNC_EVERY = 50


class NonFiniteLoss(PtuningError):
    """The loss became NaN or inf."""


class StopEpoch(Exception):
    """Raised after a completed optimizer step when `should_stop()` says so (a signal asked to stop).

    `steps` and `total` are the epoch's finished steps and loss sum so far: with them and the epoch's shuffle
    order, `train_epoch(start_step=steps, start_total=total)` continues exactly there.
    """

    def __init__(self, steps: int, total: float) -> None:
        super().__init__(f"stopped after step {steps}")
        self.steps, self.total = steps, total


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device, non_blocking: bool = True) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}


def accuracy(predictions: list[str], golds: list[str], label_words: list[str]) -> float:
    """Percent of predictions that are a label word and equal the gold word (anything else counts as wrong)."""
    if not golds:
        raise ValueError("no examples to score")
    words = set(label_words)
    correct = sum(1 for p, g in zip(predictions, golds, strict=True) if p in words and p == g)
    return 100.0 * correct / len(golds)


def check_loss(value: float, step: int, description: str) -> None:
    if not math.isfinite(value):
        raise NonFiniteLoss(f"loss is {value} at step {step} of {description}")


@dataclass(frozen=True)
class Plan:
    """How one run trains and evaluates: resolved from the job's settings and the device."""

    fast: bool
    precision: str  # "fp32" or "bf16"
    compile: bool  # torch.compile(mode="reduce-overhead") over length buckets (CUDA only)
    graphs: bool  # the whole training step as CUDA graphs over length buckets (CUDA only; ptuning.engine.graphs)
    eval_batch_size: int
    pin_memory: bool
    fused_adamw: bool
    sync_every: int
    buckets: bool = False  # training inputs padded to a few static lengths (what graphs and compile need)

    def describe(self) -> dict[str, Any]:
        return {"path": "fast" if self.fast else "faithful", **asdict(self)}


def make_plan(settings, device: torch.device, echo: Callable[[str], None] | None = None) -> Plan:
    """The plan of `settings` (a `ptuning.settings.Settings`) on `device`; `echo` hears why a setting was not honoured."""
    fast = settings.speed == "fast" or (settings.speed == "auto" and device.type == "cuda")
    precision = settings.precision
    if precision == "auto":
        precision = "bf16" if fast and device.type == "cuda" else "fp32"
    want_compile = settings.compile and fast
    if want_compile and device.type != "cuda":
        if echo:
            echo(f"compile: true is for CUDA only; training eagerly on {device}")
        want_compile = False
    cuda = device.type == "cuda"
    graphs = fast and cuda and not want_compile and settings.cuda_graphs
    return Plan(
        fast=fast,
        precision=precision,
        compile=want_compile,
        graphs=graphs,
        eval_batch_size=settings.fast_eval_batch_size if fast else settings.eval_batch_size,
        pin_memory=cuda,
        fused_adamw=fast and cuda,
        sync_every=SYNC_EVERY if fast and cuda else 1,
        buckets=graphs or want_compile,
    )


class Engine:
    """One speed path. The runner, `ptuning bench` and the GPU check use only these methods:

        engine = make_engine(settings, device)              # ptuning.engine
        loader = engine.train_loader(train_set, pad_id, generator)
        optimizer = engine.optimizer(params, lr, weight_decay)
        loss = engine.train_epoch(model, loader, optimizer)  # one pass; resumable, stoppable
        accuracy = engine.evaluate(model, test_set, tokenizer, label_words)
        engine.describe()                                    # what it did, for the result file

    Training math is the same on both paths: batch size, optimizer and its hyper-parameters, number of steps, data
    order, dropout in train mode; predictions are greedy generation's.
    """

    name: ClassVar[str] = ""

    def __init__(self, plan: Plan, settings, device: torch.device, echo: Callable[[str], None] | None = None) -> None:
        self.plan, self.device, self.echo = plan, device, echo
        self.batch_size = settings.batch_size
        self.max_length = settings.max_length
        self.generate_max_length = settings.generate_max_length

    def collator(self, dataset, pad_id: int):
        from ptuning.data import Collator

        return Collator(pad_id)

    def train_loader(self, dataset, pad_id: int, generator: torch.Generator | None = None) -> torch.utils.data.DataLoader:
        """Batches of `batch_size`, shuffled with `generator` (in dataset order without one)."""
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=generator is not None, generator=generator,
                                           collate_fn=self.collator(dataset, pad_id), pin_memory=self.plan.pin_memory)

    def optimizer(self, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """torch.optim.AdamW with PyTorch's defaults: betas (0.9, 0.999), eps 1e-8."""
        return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)

    def train_epoch(self, model, loader, optimizer, *, description: str = "train", start_step: int = 0, start_total: float = 0.0,
                    should_stop: Callable[[], bool] | None = None, on_step: Callable[[int, float], None] | None = None) -> float:
        """One pass over `loader`; the mean training loss. `start_step`/`start_total` resume an epoch stopped after
        that many steps (the loader must give the same order); `should_stop()` is asked after every step and ends
        the epoch with `StopEpoch`; a non-finite loss raises `NonFiniteLoss`."""
        raise NotImplementedError

    def predict(self, model, dataset, tokenizer, description: str = "eval") -> tuple[list[str], list[str]]:
        """(predicted words, gold words) in dataset order, by greedy decoding."""
        raise NotImplementedError

    def evaluate(self, model, dataset, tokenizer, label_words: list[str], description: str = "eval") -> float:
        """Accuracy in percent on `dataset`."""
        return accuracy(*self.predict(model, dataset, tokenizer, description), label_words)

    def describe(self) -> dict[str, Any]:
        """What this engine is and did, for the result file (`speed`)."""
        return self.plan.describe()

    def summary(self) -> str:
        """One line: precision and machinery, for humans (bench tables, run headers)."""
        raise NotImplementedError

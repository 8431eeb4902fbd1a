"""The training loop: AdamW with PyTorch defaults, constant learning rate, no clipping, model in train mode."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable

import torch
from tqdm.auto import tqdm

from ptuning.errors import PtuningError


class NonFiniteLoss(PtuningError):
    """The loss became NaN or inf."""


class StopEpoch(Exception):
    """Raised after a completed optimizer step when `should_stop()` says so (a signal asked to stop).

    `steps` and `total` are the epoch's finished steps and loss sum so far: with them and the epoch's
    shuffle order, `train_epoch(start_step=steps, start_total=total)` continues exactly there.
    """

    def __init__(self, steps: int, total: float) -> None:
        super().__init__(f"stopped after step {steps}")
        self.steps, self.total = steps, total


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """torch.optim.AdamW(params, lr) — betas (0.9, 0.999), eps 1e-8, weight decay 0.01 by default."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_epoch(
    model: torch.nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    precision: str = "fp32",
    description: str = "train",
    on_step: Callable[[int, float], None] | None = None,
    start_step: int = 0,
    start_total: float = 0.0,
    should_stop: Callable[[], bool] | None = None,
) -> float:
    """One pass over `loader`; returns the mean training loss. Stops on a non-finite loss.

    To resume an epoch stopped after `start_step` steps, pass the same shuffle order (the loader's
    generator in its epoch-start state) and the loss sum so far: the first `start_step` batches are
    drawn and skipped, so the result equals an uninterrupted epoch's.
    """
    model.train()
    total, steps = start_total, start_step
    bar = tqdm(loader, desc=description, leave=False, dynamic_ncols=True, disable=None)
    for index, batch in enumerate(bar):
        if index < start_step:
            continue
        batch = to_device(batch, device)
        with autocast(device, precision):
            loss = model(**batch).loss
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(f"loss is {value} at step {steps + 1} of {description}")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total += value
        steps += 1
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        if on_step is not None:
            on_step(steps, value)
        if should_stop is not None and should_stop():
            raise StopEpoch(steps, total)
    return total / max(steps, 1)

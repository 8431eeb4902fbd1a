"""The faithful path: the exercise's own loop, as it was handed out.

Training: AdamW with PyTorch's defaults, constant learning rate, no clipping, the model in train mode (dropout on),
batches dynamically padded to their longest input, the loss read back (and checked) after every step.
Evaluation: `model.generate(max_length, greedy)` over batches of `eval_batch_size`, decoded and compared with the
verbalizer's words (`ptuning.engine.base.accuracy`). `speed: faithful` runs it (the default on CPU).
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from ptuning.engine.base import Engine, StopEpoch, autocast, check_loss, to_device


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """torch.optim.AdamW(params, lr) — betas (0.9, 0.999), eps 1e-8, weight decay 0.01 by default."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


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
        check_loss(value, steps + 1, description)
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


@torch.no_grad()
def predict(model, loader, tokenizer, device: torch.device, max_length: int = 5, precision: str = "fp32", description: str = "eval"):
    """(predicted words, gold words) over the loader, with greedy `generate`."""
    was_training = model.training
    model.eval()
    predictions: list[str] = []
    golds: list[str] = []
    try:
        for batch in tqdm(loader, desc=description, leave=False, dynamic_ncols=True, disable=None):
            labels = batch.pop("labels")
            batch = to_device(batch, device)
            with autocast(device, precision):
                out = model.generate(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"].clone(),  # some libraries grow the mask in place
                    max_length=max_length,
                    do_sample=False,
                    num_beams=1,
                )
            predictions += tokenizer.batch_decode(out, skip_special_tokens=True)
            gold_ids = labels.masked_fill(labels < 0, tokenizer.pad_token_id)
            golds += tokenizer.batch_decode(gold_ids, skip_special_tokens=True)
    finally:
        model.train(was_training)
    return predictions, golds


class FaithfulEngine(Engine):
    """The exercise's loop: eager, dynamic padding, a host sync per step, `generate` for evaluation."""

    name = "faithful"

    def train_epoch(self, model, loader, optimizer, *, description="train", start_step=0, start_total=0.0, should_stop=None,
                    on_step=None) -> float:
        return train_epoch(model, loader, optimizer, self.device, self.plan.precision, description, on_step, start_step,
                           start_total, should_stop)

    def predict(self, model, dataset, tokenizer, description="eval"):
        from ptuning.data import Collator

        loader = torch.utils.data.DataLoader(dataset, batch_size=self.plan.eval_batch_size, shuffle=False,
                                             collate_fn=Collator(tokenizer.pad_token_id), pin_memory=self.plan.pin_memory)
        return predict(model, loader, tokenizer, self.device, self.generate_max_length, self.plan.precision, description)

    def summary(self) -> str:
        return f"{self.plan.precision}, eager, dynamic padding, generate (batch {self.plan.eval_batch_size})"

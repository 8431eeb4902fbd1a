"""Evaluation: greedy generate(max_length=5), decode, and accuracy against the verbalizer words.

A prediction counts only if it is exactly one of the label words *and* equals the gold word;
anything else (an empty string, a different word, extra tokens) is wrong.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ptuning.engine.train import autocast, to_device


def accuracy(predictions: list[str], golds: list[str], label_words: list[str]) -> float:
    """Percent of predictions that are a label word and equal the gold word."""
    if not golds:
        raise ValueError("no examples to score")
    words = set(label_words)
    correct = sum(1 for p, g in zip(predictions, golds, strict=True) if p in words and p == g)
    return 100.0 * correct / len(golds)


@torch.no_grad()
def predict(model, loader, tokenizer, device: torch.device, max_length: int = 5, precision: str = "fp32", description: str = "eval"):
    """(predicted words, gold words) over the loader, with greedy decoding."""
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


def evaluate(model, loader, tokenizer, label_words: list[str], device: torch.device, max_length: int = 5, precision: str = "fp32", description: str = "eval") -> float:
    predictions, golds = predict(model, loader, tokenizer, device, max_length, precision, description)
    return accuracy(predictions, golds, label_words)

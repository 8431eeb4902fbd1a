"""The two evaluation protocols: which data a run evaluates on and which epoch its figure comes from.

- `faithful` (the exercise): train on the train split, evaluate on the test split after every epoch,
  report the maximum test accuracy over epochs. Selecting on the test set is optimistic
  (docs/protocol.md, known caveats).
- `heldout` (honest): hold out `heldout_size` training reviews as a validation split (stratified by
  label, drawn with `heldout_seed`, independent of the job's seed), train on the rest, evaluate on
  validation and test after every epoch, select the epoch by validation accuracy and report the test
  accuracy at that epoch.

`train_limit` applies to what is left for training after the hold-out; `eval_limit` to the test
split only (the validation split's size is `heldout_size`).
"""

from __future__ import annotations

from typing import Any

from ptuning.errors import PtuningError

#: the protocol names, in table order (results record the name)
PROTOCOLS = ("faithful", "heldout")


def heldout_indices(labels: list[int], size: int, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices), both sorted, disjoint, covering every example.

    Stratified: each label gets its share of `size` (largest remainder, ties to the smaller label),
    and within a label the examples are drawn by a permutation seeded with `seed`.
    """
    import torch

    n = len(labels)
    if not 0 < size < n:
        raise PtuningError(f"heldout_size {size} must be at least 1 and smaller than the {n:,} training reviews")
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(int(y), []).append(i)
    classes = sorted(by_label)
    exact = {c: size * len(by_label[c]) / n for c in classes}
    quota = {c: int(exact[c]) for c in classes}
    for c in sorted(classes, key=lambda c: (-(exact[c] - quota[c]), c))[: size - sum(quota.values())]:
        quota[c] += 1
    generator = torch.Generator().manual_seed(seed)
    validation: list[int] = []
    for c in classes:
        members = by_label[c]
        order = torch.randperm(len(members), generator=generator)[: quota[c]].tolist()
        validation += [members[j] for j in order]
    validation.sort()
    held = set(validation)
    return [i for i in range(n) if i not in held], validation


def split_train(train_ds, job) -> tuple[Any, Any]:
    """(training part, validation part) of a `datasets.Dataset` for the heldout protocol."""
    train_idx, val_idx = heldout_indices(list(train_ds["label"]), job.settings.heldout_size, job.settings.heldout_seed)
    return train_ds.select(train_idx), train_ds.select(val_idx)


def build_datasets(job, tokenizer, placeholders: int, splits) -> tuple[Any, dict[str, Any]]:
    """(train set, {"test": test set[, "validation": validation set]}) for the job's protocol."""
    from ptuning import data as data_mod

    if job.settings.protocol == "faithful":
        train_set, test_set, _ = data_mod.build_datasets(job, tokenizer, placeholders, splits)
        return train_set, {"test": test_set}
    import datasets

    train_part, validation = split_train(splits["train"], job)
    limited = datasets.DatasetDict({"train": train_part, "test": splits["test"]})
    train_set, test_set, targets = data_mod.build_datasets(job, tokenizer, placeholders, limited)
    encoded = data_mod.encode_split(validation, tokenizer, job.settings.max_length, None)
    val_set = data_mod.ExamplesDataset(encoded, targets, placeholders, job.settings.max_length, tokenizer.pad_token_id, tokenizer.eos_token_id)
    return train_set, {"validation": val_set, "test": test_set}


def select(epochs: list[dict[str, Any]], protocol: str) -> dict[str, Any]:
    """The epoch whose figure is reported, and the figure.

    faithful: the first epoch with the highest test accuracy. heldout: the first epoch with the
    highest validation accuracy, reporting its test accuracy.
    """
    if not epochs:
        raise ValueError("no epochs to select from")
    key = "accuracy" if protocol == "faithful" else "val_accuracy"
    best = max(epochs, key=lambda e: e[key])  # max returns the first maximal element
    return {
        "protocol": protocol,
        "selected_by": "test accuracy (optimistic)" if protocol == "faithful" else "validation accuracy",
        "selected_epoch": best["epoch"],
        "reported_accuracy": best["accuracy"],
        "selected_val_accuracy": best.get("val_accuracy"),
    }

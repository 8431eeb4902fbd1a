"""The heldout protocol's validation split, epoch selection, and both protocols end to end on the tiny model."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptuning import protocol
from ptuning.errors import PtuningError
from ptuning.run import runner
from ptuning.settings import load_job

from .conftest import JOBS


def test_heldout_split_is_disjoint_stratified_and_fixed_by_its_seed():
    labels = [0] * 300 + [1] * 100  # sorted by label, like IMDb, and imbalanced
    train, val = protocol.heldout_indices(labels, 40, seed=0)
    assert not set(train) & set(val) and sorted(train + val) == list(range(400))
    assert [labels[i] for i in val].count(1) == 10 and len(val) == 40  # 25 % positives, as in train
    assert protocol.heldout_indices(labels, 40, seed=0) == (train, val)
    assert protocol.heldout_indices(labels, 40, seed=1)[1] != val
    # equal remainders (1.5 reviews each): the smaller label gets the extra one, as documented
    tie = [0, 0, 0, 1, 1, 1]
    assert [tie[i] for i in protocol.heldout_indices(tie, 3, seed=0)[1]].count(0) == 2
    with pytest.raises(PtuningError, match="heldout_size 400 must be"):
        protocol.heldout_indices(labels, 400, seed=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=2, max_size=200), st.data())
def test_heldout_split_invariants(labels, data):
    size = data.draw(st.integers(1, len(labels) - 1))
    train, val = protocol.heldout_indices(labels, size, data.draw(st.integers(0, 10)))
    assert len(val) == size and not set(train) & set(val) and sorted(train + val) == list(range(len(labels)))
    for label in (0, 1):
        share = labels.count(label) * size / len(labels)
        assert abs([labels[i] for i in val].count(label) - share) < 1  # largest remainder: within one review


def test_heldout_split_of_a_dataset_shares_no_review_with_training(tiny_data_dir):
    from ptuning.data import load_splits

    ds = load_splits(str(tiny_data_dir))["train"]
    assert len(set(ds["text"])) == len(ds)
    job = load_job("full_ft", JOBS).override(heldout_size=16, protocol="heldout")
    train, val = protocol.split_train(ds, job)
    assert len(val) == 16 and len(train) == len(ds) - 16
    assert not set(train["text"]) & set(val["text"])
    assert sorted(val["label"]) == [0] * 8 + [1] * 8
    again = protocol.split_train(ds, job)[1]
    other = protocol.split_train(ds, job.override(heldout_seed=1))[1]
    assert again["text"] == val["text"] and other["text"] != val["text"]


def test_selection_faithful_takes_max_test_heldout_takes_best_validation():
    epochs = [
        {"epoch": 1, "accuracy": 80.0, "val_accuracy": 85.0},
        {"epoch": 2, "accuracy": 90.0, "val_accuracy": 84.0},
        {"epoch": 3, "accuracy": 86.0, "val_accuracy": 85.0},
    ]
    assert protocol.select(epochs, "faithful")["selected_epoch"] == 2
    honest = protocol.select(epochs, "heldout")
    assert (honest["selected_epoch"], honest["reported_accuracy"], honest["selected_val_accuracy"]) == (1, 80.0, 85.0)


def test_both_protocols_end_to_end_in_separate_run_dirs(tmp_path, tiny_model_dir, tiny_data_dir):
    base = load_job("lora_8", JOBS).override(model=str(tiny_model_dir), dataset=str(tiny_data_dir), epochs=2,
                                             train_limit=16, eval_limit=8, max_length=32, heldout_size=10)
    quiet = lambda _: None  # noqa: E731
    heldout = runner.run_job(base.override(protocol="heldout"), tmp_path, "cpu", echo=quiet)
    faithful = runner.run_job(base, tmp_path, "cpu", echo=quiet)
    on_disk = json.loads((tmp_path / "lora_8" / "heldout-seed0" / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(heldout))
    assert (tmp_path / "lora_8" / "seed0" / "result.json").exists() and (tmp_path / "lora_8" / "heldout-seed0" / "lora" / "lora.safetensors").is_file()
    assert heldout["protocol"] == "heldout" and heldout["config"]["protocol"] == "heldout"
    assert [sorted(e) for e in heldout["epochs"]] == [sorted(["epoch", "train_loss", "accuracy", "val_accuracy", "train_seconds", "eval_seconds"])] * 2
    best = max(heldout["epochs"], key=lambda e: e["val_accuracy"])
    assert heldout["selected_epoch"] == best["epoch"] and heldout["reported_accuracy"] == best["accuracy"]
    assert faithful["protocol"] == "faithful" and all("val_accuracy" not in e for e in faithful["epochs"])
    assert faithful["reported_accuracy"] == faithful["max_accuracy"]
    saved = tmp_path / "lora_8" / "heldout-seed0" / "lora"
    assert heldout["artifact"] == "lora" and heldout["artifact_bytes"] == sum(p.stat().st_size for p in saved.iterdir()) > 0

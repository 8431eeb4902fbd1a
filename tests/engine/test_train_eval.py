"""Training changes exactly the trainable parameters; evaluation scores exactly."""

from __future__ import annotations

import pytest
import torch

from ptuning import data
from ptuning.engine import accuracy
from ptuning.engine.faithful import predict
from ptuning.engine import NonFiniteLoss
from ptuning.engine.faithful import make_optimizer, train_epoch
from ptuning.methods import build_method


def _loader(tok, data_dir, n=8, batch=4, placeholders=0):
    splits = data.load_splits(str(data_dir))
    targets = data.label_token_ids(tok, ["negative", "positive"])
    enc = data.encode_split(splits["train"], tok, 32, n)
    ds = data.ExamplesDataset(enc, targets, placeholders, 32, tok.pad_token_id, tok.eos_token_id)
    return torch.utils.data.DataLoader(ds, batch_size=batch, collate_fn=data.Collator(tok.pad_token_id))


def test_full_fine_tuning_step_changes_every_parameter(tiny_model, tiny_data_dir):
    model, tok = tiny_model
    method = build_method("full", "hand", {})
    model = method.apply(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer([p for _, p in method.trainable_parameters(model)], 1e-3, 0.01)
    loss = train_epoch(model, _loader(tok, tiny_data_dir, n=4), opt, torch.device("cpu"))
    assert loss > 0
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert len(changed) == len(before)


def test_frozen_parameters_stay_bit_identical(tiny_model, tiny_data_dir):
    model, tok = tiny_model
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.encoder.block[0].layer[0].SelfAttention.q.weight
    head.requires_grad_(True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer([head], 1e-2, 0.01)
    train_epoch(model, _loader(tok, tiny_data_dir, n=4), opt, torch.device("cpu"))
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert changed == ["encoder.block.0.layer.0.SelfAttention.q.weight"]


def test_non_finite_loss_stops_with_the_step(tiny_model, tiny_data_dir):
    model, tok = tiny_model
    with torch.no_grad():
        model.shared.weight.fill_(float("nan"))
    opt = make_optimizer(model.parameters(), 1e-3, 0.01)
    with pytest.raises(NonFiniteLoss, match="loss is nan at step 1"):
        train_epoch(model, _loader(tok, tiny_data_dir, n=4), opt, torch.device("cpu"))


def test_accuracy_counts_non_label_words_as_wrong():
    labels = ["negative", "positive"]
    golds = ["positive", "negative", "positive", "negative"]
    preds = ["positive", "negative", "positive positive", ""]
    assert accuracy(preds, golds, labels) == 50.0
    assert accuracy(["Positive", "negative"], ["positive", "negative"], labels) == 50.0
    assert accuracy(["negative"], ["positive"], labels) == 0.0


def test_predict_decodes_greedy_generate(tiny_model, tiny_data_dir):
    model, tok = tiny_model
    loader = _loader(tok, tiny_data_dir, n=6, batch=3)
    model.train()
    preds, golds = predict(model, loader, tok, torch.device("cpu"), max_length=5)
    assert len(preds) == len(golds) == 6
    assert set(golds) <= {"negative", "positive"}
    assert model.training  # train mode restored after evaluation
    model.eval()  # dropout off, as predict() does
    batch = next(iter(loader))
    out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_length=5, do_sample=False)
    assert preds[:3] == tok.batch_decode(out, skip_special_tokens=True)


def test_each_job_peak_gpu_memory_starts_from_a_cleared_cache(monkeypatch):
    """run-all runs its jobs in one process: the job before's cached memory (and its graphs' pool) is handed back
    before this job's peaks are reset, or a small job would report the job before's reserved memory as its own."""
    import gc

    from ptuning.run import runner

    calls = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    runner.reset_peak_memory(torch.device("cpu"))
    assert calls == []
    cuda = torch.device("cuda")
    runner.reset_peak_memory(cuda)
    assert calls == ["collect", "empty_cache", ("reset", cuda)]

"""The zero-shot row: evaluated once, no optimizer, no step, parameters bit-identical, nothing saved."""

from __future__ import annotations

import torch

from ptuning.methods import build_method, count_parameters
from ptuning.run import runner
from ptuning.settings import load_job
from tests.conftest import JOBS


def test_zero_shot_runs_without_any_optimizer_step(tmp_path, monkeypatch, tiny_model_dir, tiny_data_dir):
    def forbidden(*args, **kwargs):
        raise AssertionError("zero-shot must not create an optimizer or train")

    from ptuning.engine.base import Engine
    from ptuning.engine.faithful import FaithfulEngine
    from ptuning.engine.fast import FastEngine

    for engine in (Engine, FaithfulEngine, FastEngine):  # every path's optimizer and training epoch
        monkeypatch.setattr(engine, "optimizer", forbidden)
        monkeypatch.setattr(engine, "train_epoch", forbidden)
    seen = {}
    load_model = runner.load_model

    def spy(ref):
        model, tokenizer = load_model(ref)
        seen["model"] = model
        seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model, tokenizer

    monkeypatch.setattr(runner, "load_model", spy)
    job = load_job("zero_shot", JOBS).override(model=str(tiny_model_dir), dataset=str(tiny_data_dir), train_limit=8,
                                               eval_limit=8, max_length=32)
    result = runner.run_job(job, tmp_path, "cpu", echo=lambda _: None)

    after = dict(seen["model"].named_parameters())
    assert all(torch.equal(seen["before"][n], after[n]) for n in seen["before"])
    assert len(result["epochs"]) == 1 and result["epochs"][0]["epoch"] == 0 and result["epochs"][0]["train_loss"] is None
    assert result["config"]["epochs"] == 0 and result["config"]["lr"] is None
    assert result["selected_epoch"] == 0 and result["reported_accuracy"] == result["epochs"][0]["accuracy"]
    assert result["params"]["trainable"] == 0 and result["params"]["added"] == 0 and result["params"]["match"]
    assert result["artifact"] is None and result["artifact_bytes"] is None
    assert sorted(p.name for p in (tmp_path / "zero_shot" / "seed0").iterdir()) == ["metrics.jsonl", "result.json"]
    from ptuning.report.results import read_result, schema_problem

    assert schema_problem(result) is None and read_result(tmp_path / "zero_shot" / "seed0" / "result.json") == result


def test_zero_shot_method_freezes_everything(tiny_model):
    model, _ = tiny_model
    method = build_method("zero_shot", "hand", {})
    model = method.apply(model)
    total, trainable = count_parameters(model)
    assert trainable == 0 and total > 0 and method.trains is False
    assert method.formula(model.config).value == 0 and str(method.formula(model.config)) == "0"

"""Result files round-trip atomically; tables render every state (completed, failed, not run)."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from ptuning.cli import main
from ptuning.errors import PtuningError
from ptuning.report import results
from ptuning.report import tables as report
from ptuning.settings import load_all_jobs
from tests.conftest import JOBS


def fake_result(job: str, best=88.5, status="completed", seed=0):
    return {
        "job": job,
        "status": status,
        "config": {"seed": seed},
        "epochs": [{"epoch": 1, "accuracy": 80.0}, {"epoch": 2, "accuracy": best}],
        "max_accuracy": best,
        "max_epoch": 2,
        "final_accuracy": best - 1.5,
        "train_seconds": 125.0,
        "params": {"total": 60_801_536, "trainable": 294_912, "added": 294_912, "formula": "M·2·r·(d_in + d_out) = 18·2·8·(512 + 512) = 294,912", "formula_value": 294_912, "match": True},
    }


def test_result_round_trip_and_no_temporary_files_left(tmp_path):
    path = results.run_dir(tmp_path, "lora_8", 0) / results.RESULT_FILE
    results.write_result(path, fake_result("lora_8"))
    assert results.read_result(path) == fake_result("lora_8")
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]
    assert results.load_results(tmp_path) == {"lora_8": [fake_result("lora_8")]}


def test_load_results_skips_a_broken_file(tmp_path):
    broken = results.run_dir(tmp_path, "full_ft", 0) / results.RESULT_FILE
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    assert results.load_results(tmp_path) == {}


def test_tables_show_not_run_failed_and_numbers():
    jobs = load_all_jobs(JOBS)
    res = {"lora_8": [fake_result("lora_8", best=89.4)], "full_ft": [{"job": "full_ft", "status": "failed", "reason": "loss is nan at step 3"}]}
    text = report.tables(jobs, res)
    lines = text.splitlines()
    lora = next(line for line in lines if "| lora_8 " in line and "88.9" in line)
    assert "| 87.9 " in lora  # final-epoch accuracy
    assert "| 89.4 (n=1) " in lora and "| 2 " in lora and "+0.5" in lora and "2.1 min" in lora and "| faithful " in lora
    assert "| n too small " not in lora  # full_ft failed: no comparison at all
    full = next(line for line in lines if "| full_ft " in line)
    assert "failed: loss is nan at step 3" in full
    not_run = [line for line in lines if "| adapter_8 " in line]
    assert len(not_run) == 2 and all(report.NOT_RUN in line for line in not_run)
    params = next(line for line in lines if "| lora_8 " in line and "294,912" in line)
    assert "60,801,536" in params and "| yes" in params
    assert text.count("| 1 ") >= 2 and "## Accuracy (test split)" in text and "## Parameters" in text
    assert text.startswith("## Accuracy (test split)\n")


def test_environment_records_versions():
    import platform
    from importlib import metadata

    import torch
    import transformers

    env = results.environment(torch.device("cpu"))
    assert env["packages"]["torch"] == metadata.version("torch") and torch.__version__.startswith(env["packages"]["torch"])
    assert env["packages"]["transformers"] == transformers.__version__
    assert set(env["packages"]) == set(results.PACKAGES)
    assert env["python"] == platform.python_version() and env["device"] == "cpu"
    assert env["gpu"] is None and env["date"]
    json.dumps(env)


def test_every_table_row_has_as_many_cells_as_the_header():
    jobs = load_all_jobs(JOBS)
    res = {"lora_8": [fake_result("lora_8")], "full_ft": [{"job": "full_ft", "status": "failed", "reason": "x"}]}
    assert {len(r) for r in report.accuracy_rows(jobs, res)} == {len(report.ACCURACY_HEADERS)}
    assert {len(r) for r in report.parameter_rows(jobs, res)} == {len(report.PARAMETER_HEADERS)}


def test_pick_prefers_a_completed_faithful_run_then_the_lowest_seed():
    """The run behind the parameter table: completed first, then faithful, then the lowest seed."""
    failed = {"job": "lora_8", "status": "failed", "reason": "x", "config": {"seed": 0}}
    heldout = {**fake_result("lora_8", seed=0), "protocol": "heldout"}
    seed2, seed1 = fake_result("lora_8", seed=2), fake_result("lora_8", seed=1)
    assert report.pick([failed, heldout, seed2, seed1]) is seed1
    assert report.pick([failed, heldout]) is heldout
    assert report.pick([failed]) is failed and report.pick([]) is None and report.pick(None) is None
    row = report.parameter_rows(load_all_jobs(JOBS), {"lora_8": [failed, seed1]})
    assert next(r for r in row if r[1] == "lora_8")[4:] == ["60,801,536", "294,912", "294,912", seed1["params"]["formula"], "yes"]


def test_a_result_file_that_is_not_a_json_object_is_skipped_and_named(tmp_path):
    for job, content in (("full_ft", b"\xff\xfe binary"), ("lora_8", b"[1, 2]"), ("adapter_8", b"null")):
        path = results.run_dir(tmp_path, job, 0) / results.RESULT_FILE
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
        with pytest.raises(PtuningError, match="unreadable result file"):
            results.read_result(path)
    assert results.load_results(tmp_path) == {}
    tables = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "tables", "--results", str(tmp_path)], catch_exceptions=False)
    assert tables.exit_code == 0  # a damaged file reads as "not run"
    assert re.search(r"^ +1  Full fine-tuning +– +not run +90\.0$", tables.output, re.M), tables.output
    assert "| 1     | full_ft                  | Full fine-tuning          | –            | –          | not run " in (tmp_path / "TABLES.md").read_text()
    check = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "check", "--results", str(tmp_path)], catch_exceptions=False)
    assert check.exit_code == 1 and "FAIL full_ft" in check.output and "did not run" in check.output


def _edited(change) -> dict:
    result = fake_result("lora_8")
    change(result)
    return result


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda r: r.update(config=["seed", 0]), "'config' is a list, not a mapping"),
        (lambda r: r["config"].update(seed="zero"), "'config.seed' is 'zero', not a number"),
        (lambda r: r["config"].update(epochs=True), "'config.epochs' is True, not a number"),
        (lambda r: r.update(epochs="x"), "'epochs' is not a list of mappings"),
        (lambda r: r.update(epochs=[{"epoch": 1, "accuracy": "high"}]), "an epoch's 'accuracy' is 'high', not a number"),
        (lambda r: r.update(max_accuracy="89"), "'max_accuracy' is '89', not a number"),
        (lambda r: r.update(train_seconds=[1]), "'train_seconds' is [1], not a number"),
        (lambda r: r.update(status=1), "'status' is a int, not text"),
        (lambda r: r.update(params="many"), "'params' is a str, not a mapping"),
        (lambda r: r["params"].pop("trainable"), "'params.trainable' is missing or not a whole number"),
        (lambda r: r["params"].update(total="60M"), "'params.total' is '60M', not a number"),
    ],
)
def test_a_hand_edited_result_with_a_wrong_field_is_left_out_with_one_warning(tmp_path, change, problem):
    path = results.run_dir(tmp_path, "lora_8", 0) / results.RESULT_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_edited(change)))
    results.write_result(results.run_dir(tmp_path, "full_ft", 0) / results.RESULT_FILE, fake_result("full_ft"))  # a good one beside it
    with pytest.raises(PtuningError) as info:
        results.read_result(path)
    assert str(info.value) == f"{path}: unreadable result file ({problem})"
    skipped: list[str] = []
    assert list(results.load_results(tmp_path, skipped)) == ["full_ft"] and skipped == [str(info.value)]
    runner = CliRunner()
    for command in ("tables", "plots"):
        out = runner.invoke(main, ["--jobs-dir", str(JOBS), command, "--results", str(tmp_path)], catch_exceptions=False)
        assert out.exit_code == 0 and out.stderr == f"ptuning: warning: left out: {path}: unreadable result file ({problem})\n"
    check = runner.invoke(main, ["--jobs-dir", str(JOBS), "check", "--results", str(tmp_path)], catch_exceptions=False)
    assert check.exit_code == 1 and check.output.splitlines()[0] == f"WARN left out: {path}: unreadable result file ({problem})"


def test_a_result_the_runner_writes_passes_the_schema():
    assert results.schema_problem(fake_result("lora_8")) is None
    assert results.schema_problem({"job": "full_ft", "status": "failed", "reason": "x", "config": {"seed": 0}}) is None

"""The `ptuning` command end to end on the tiny local model and data, and its bad-input paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ptuning.cli import main
from ptuning.report.results import schema_problem
from ptuning.report.stats import summarize

from .conftest import JOBS, REPO


def invoke(*args, **env):
    runner = CliRunner()
    return runner.invoke(main, ["--jobs-dir", str(JOBS), *args], env={"HF_HUB_OFFLINE": "1", **env}, catch_exceptions=False)


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_list_shows_the_ten_rows():
    result = invoke("list")
    assert result.exit_code == 0
    for name in ("full_ft", "soft_prompt_10_opendelta", "lora_1_peft"):
        assert name in result.output
    zero = next(line for line in result.output.splitlines() if "| zero_shot " in line)
    assert zero.startswith("| 0 ") and "Zero-shot (no training)" in zero and zero.rstrip("| ").endswith("–")
    assert result.output.splitlines()[2].startswith("| 0 ")  # first in table order
    rates = {line.split("|")[2].strip(): line.rstrip(" |").rsplit("|", 1)[1].strip() for line in result.output.splitlines()[2:]}
    assert rates == {"zero_shot": "–", "full_ft": "1e-5", "soft_prompt_10": "1e-1", "soft_prompt_10_opendelta": "1e-1",
                     "soft_prompt_1_opendelta": "1e-1", "adapter_8": "1e-3", "adapter_8_adapterhub": "1e-4",
                     "adapter_1_adapterhub": "1e-4", "lora_8": "1e-4", "lora_8_peft": "1e-4", "lora_1_peft": "1e-4"}
    from ptuning.cli import format_lr

    assert [format_lr(x) for x in (3e-4, 2.5e-5, 0.1, 1.0, 1e-5)] == ["3e-4", "2.5e-5", "1e-1", "1e0", "1e-5"]


def test_run_full_ft_on_tiny_model_writes_result_and_tables(tmp_path, tiny_model_dir, tiny_data_dir):
    out = tmp_path / "results"
    result = invoke("run", "full_ft", "--model", str(tiny_model_dir), "--dataset", str(tiny_data_dir), "--epochs", "2",
                    "--train-limit", "16", "--eval-limit", "8", "--device", "cpu", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "full_ft" / "seed0" / "result.json").read_text())
    assert data["status"] == "completed" and len(data["epochs"]) == 2
    assert schema_problem(data) is None  # what the runner writes, the tables read
    assert data["max_accuracy"] == max(e["accuracy"] for e in data["epochs"])
    assert data["final_accuracy"] == data["epochs"][-1]["accuracy"]
    assert data["params"]["added"] == 0 and data["params"]["trainable"] == data["params"]["total"] and data["params"]["match"]
    assert data["config"]["epochs"] == 2 and data["config"]["train_limit"] == 16
    assert data["environment"]["packages"]["transformers"] == "4.57.6"
    assert (out / "full_ft" / "seed0" / "model" / "model.safetensors").is_file() and data["artifact"] == "model"
    tables = invoke("tables", "--wide", "--results", str(out))
    assert tables.exit_code == 0
    row = next(line for line in tables.output.splitlines() if "| full_ft " in line and "90.0" in line)
    assert f"{data['max_accuracy']:.1f}" in row
    assert tables.output.count("not run") >= 9 * 2


def test_run_with_two_seeds_gives_two_results_and_mean_std_in_the_table(tmp_path, tiny_model_dir, tiny_data_dir):
    out = tmp_path / "results"
    result = invoke("run", "full_ft", "--seeds", "0,1", "--model", str(tiny_model_dir), "--dataset", str(tiny_data_dir),
                    "--epochs", "1", "--train-limit", "8", "--eval-limit", "4", "--device", "cpu", "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.parent.name for p in out.glob("full_ft/*/result.json")) == ["seed0", "seed1"]
    records = [json.loads((out / "full_ft" / d / "result.json").read_text()) for d in ("seed0", "seed1")]
    assert [r["config"]["seed"] for r in records] == [0, 1]
    # each run used its own seed (dropout draws, shuffle), not just recorded it
    assert records[0]["epochs"][0]["train_loss"] != records[1]["epochs"][0]["train_loss"]
    tables = invoke("tables", "--wide", "--results", str(out))
    row = next(line for line in tables.output.splitlines() if "| full_ft " in line and "| faithful " in line)
    expected = summarize([r["reported_accuracy"] for r in records]).text()
    assert f"| {expected} " in row and expected.endswith(" (n=2)") and " ± " in expected
    both = invoke("run", "full_ft", "--seed", "1", "--seeds", "0,1", "--output-dir", str(out))
    assert both.exit_code == 1 and "not both" in both.stderr


def test_same_seed_same_result(tmp_path, tiny_model_dir, tiny_data_dir):
    args = ["run", "full_ft", "--model", str(tiny_model_dir), "--dataset", str(tiny_data_dir), "--epochs", "1",
            "--train-limit", "8", "--eval-limit", "4", "--device", "cpu"]
    a = invoke(*args, "--output-dir", str(tmp_path / "a"))
    b = invoke(*args, "--output-dir", str(tmp_path / "b"))
    assert a.exit_code == b.exit_code == 0
    ra = json.loads((tmp_path / "a/full_ft/seed0/result.json").read_text())
    rb = json.loads((tmp_path / "b/full_ft/seed0/result.json").read_text())
    assert ra["epochs"][0]["train_loss"] == rb["epochs"][0]["train_loss"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "no_such_job"], "no job named 'no_such_job'"),
        (["run", "full_ft", "--model", "/does/not/exist"], "model path /does/not/exist does not exist"),
        (["run", "full_ft", "--model", "t5-small"], "cannot load model 't5-small'"),
        (["run", "full_ft", "--epochs", "0"], "'epochs' must be at least 1"),
        (["run", "full_ft", "--device", "cuda:7"], "--device cuda:7 was asked for but no CUDA GPU is visible"),  # names what was asked
        (["tables", "--results", "/does/not/exist"], "results directory /does/not/exist does not exist"),
    ],
)
def test_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args, "--output-dir", str(tmp_path / "results")) if args[0] == "run" else invoke(*args)
    assert result.exit_code == 1
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("ptuning: error:")
    assert "Traceback" not in result.output
    assert [p for p in tree(tmp_path / "results") if p.endswith((".json", ".pt", ".safetensors"))] == []


def test_broken_job_file_and_missing_dataset_columns(tmp_path, tiny_model_dir):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "_defaults.yaml").write_text((JOBS / "_defaults.yaml").read_text())
    (tmp_path / "jobs" / "broken.yaml").write_text("title: [oops\n")
    result = CliRunner().invoke(main, ["--jobs-dir", str(tmp_path / "jobs"), "run", "broken"])
    assert result.exit_code == 1 and "malformed YAML" in result.stderr
    bad = tmp_path / "bad-data"
    bad.mkdir()
    for split in ("train", "test"):
        (bad / f"{split}.jsonl").write_text('{"review": "x", "label": 1}\n')
    result = invoke("run", "full_ft", "--model", str(tiny_model_dir), "--dataset", str(bad), "--device", "cpu",
                    "--output-dir", str(tmp_path / "results"))
    assert result.exit_code == 1 and "has no 'text' column" in result.stderr
    assert [p for p in tree(tmp_path / "results") if p.endswith((".json", ".pt", ".safetensors"))] == []


def test_model_that_is_not_t5_is_refused(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path / "bert")
    result = invoke("run", "full_ft", "--model", str(tmp_path / "bert"), "--output-dir", str(tmp_path / "r"))
    assert result.exit_code == 1 and "is a 'bert' model; ptuning needs a T5 model" in result.stderr


@pytest.mark.parametrize("name", ["t5-small", "empty"])
def test_model_directory_without_config_is_refused_whatever_its_name(tmp_path, name):
    (tmp_path / name).mkdir()  # transformers guessed from the name: a default T5 ("t5-small"), or "mpt" ("empty")
    result = invoke("params", "--model", str(tmp_path / name))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"ptuning: error: {tmp_path / name} is not a model directory (no config.json); pass --model with one"


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: _truncate(d / "model.safetensors"), ": cannot load the model (SafetensorError: "),
        (lambda d: (d / "tokenizer.json").write_text("{"), ": cannot load the tokenizer (Exception: "),
        (lambda d: [(d / f).unlink() for f in ("tokenizer.json", "spiece.model")], ": no tokenizer in the model directory"),
        (lambda d: (d / "config.json").write_text("[1, 2]"), " is not a model directory (no usable config.json)"),
    ],
    ids=["truncated weights", "broken tokenizer.json", "no tokenizer", "config.json a list"],
)
def test_damaged_model_directory_is_one_line(tmp_path, tiny_model_dir, tiny_data_dir, damage, message):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    damage(model)
    result = invoke("run", "full_ft", "--model", str(model), "--dataset", str(tiny_data_dir), "--device", "cpu",
                    "--output-dir", str(tmp_path / "results"))
    assert result.exit_code == 1
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ptuning: error: [full_ft] {model}") and message in err[0], err
    assert [p for p in tree(tmp_path / "results") if p.endswith((".json", ".pt", ".safetensors"))] == []


def test_console_script_help_runs_without_traceback():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "ptuning.cli", "--help"], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0 and "run-all" in out.stdout and "smoke" in out.stdout

"""`ptuning tune`: search on validation data, the choice, the tuned and fixed runs, tune.json and the tables; and the
controlled comparison (paired where the data order is shared, Holm across rows, seeds needed)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ptuning.cli import main
from ptuning.errors import PtuningError
from ptuning.report import stats
from ptuning.run import tune as tune_mod
from tests.run.test_reliability import write_jobs

LORA = "title: L\nrow: 3\nmethod: {name: lora, implementation: hand, rank: 2}\nlr: 1.0e-3\nsweep: {lr: [1.0e-3, 1.0e-2]}\n"
FULL = "title: F\nrow: 1\nmethod: {name: full, implementation: hand}\nlr: 1.0e-4\n"


def invoke(jobs_dir, *args):
    return CliRunner().invoke(main, ["--jobs-dir", str(jobs_dir), *args], env={"HF_HUB_OFFLINE": "1"}, catch_exceptions=False)


@pytest.fixture
def tune_jobs(tmp_path, tiny_model_dir, tiny_data_dir):
    jobs = write_jobs(tmp_path / "jobs", tiny_model_dir, tiny_data_dir, {"lora": LORA, "full_ft": FULL})
    text = (jobs / "_defaults.yaml").read_text().replace("heldout_size: 2500", "heldout_size: 8").replace("train_limit: 16", "train_limit: 24")
    (jobs / "_defaults.yaml").write_text(text)
    return jobs


def test_tune_searches_chooses_and_runs_the_choice_and_the_fixed_settings(tune_jobs, tmp_path):
    out = tmp_path / "out"
    result = invoke(tune_jobs, "tune", "lora", "--seeds", "0,1", "--budget-epochs", "1", "--device", "cpu", "--output-dir", str(out))
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads((out / "tune.json").read_text())["jobs"]["lora"]
    assert list(summary["grid"]) == ["lr=1e-3", "lr=0.01"] and summary["search_seeds"] == [0] and summary["seeds"] == [0, 1]
    assert summary["chosen"] == tune_mod.choose({p: v["validation_accuracy"] for p, v in summary["grid"].items()})
    for point in summary["grid"]:  # the search: heldout, one seed, the budget's epochs
        record = json.loads((out / "search" / "lora" / point / "heldout-seed0" / "result.json").read_text())
        assert record["config"]["epochs"] == 1 and record["protocol"] == "heldout"
        assert summary["grid"][point]["validation_accuracy"] == [record["selected_val_accuracy"]]
    for seed in (0, 1):  # the choice and the fixed settings, every seed, the job's epochs
        tuned = json.loads((out / "lora" / summary["chosen"] / f"heldout-seed{seed}" / "result.json").read_text())
        fixed = json.loads((out / "lora" / f"heldout-seed{seed}" / "result.json").read_text())
        assert tuned["config"]["epochs"] == fixed["config"]["epochs"] == 2
        assert fixed["config"]["lr"] == 1e-3 and "variant" not in fixed["config"]
    text = (out / "TUNE.md").read_text()
    assert text in result.output
    row = next([c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| 3 "))
    assert row[:4] == ["3", "lora", f"{summary['chosen']} (of 2)", f"{summary['grid'][summary['chosen']]['mean']:.1f} (n=1)"]
    assert "### lora: validation accuracy of each point (%)" in text
    again = invoke(tune_jobs, "tune", "lora", "--seeds", "0,1", "--budget-epochs", "1", "--device", "cpu", "--output-dir", str(out))
    assert again.exit_code == 0 and again.output.count("already completed with this configuration") == 6  # nothing reruns


@pytest.mark.parametrize("args, message", [
    (["lora", "--protocol", "faithful"], "tune chooses on validation data: it runs the heldout protocol (drop --protocol)"),
    (["full_ft"], "full_ft has no grid to tune: add `sweep:` to its job file or give --sweep KEY=V1,V2"),
    (["lora", "--sweep", "lr"], "--sweep 'lr': expected KEY=V1,V2,..., e.g. --sweep lr=1e-4,3e-4 or --sweep rank=1,8"),
    (["lora", "--sweep", "lr=1e-3,x"], "--sweep lr: 'lr' must be a number, got 'x'"),
    (["lora", "--sweep", "rank=0,1"], "lora (--sweep): 'method.rank' must be at least 1, got 0"),
])
def test_bad_tune_input_is_one_line_and_runs_nothing(tune_jobs, tmp_path, args, message):
    out = tmp_path / "out"
    result = invoke(tune_jobs, "tune", *args, "--device", "cpu", "--output-dir", str(out))
    assert result.exit_code == 1 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


def test_sweep_option_replaces_the_files_grid_for_its_key(tune_jobs):
    from ptuning.settings import load_job

    job = load_job("lora", tune_jobs)
    assert tune_mod.with_grid(job, [tune_mod.parse_sweep_option("lr=3e-4")]).sweep == {"lr": [3e-4]}
    grown = tune_mod.with_grid(job, [tune_mod.parse_sweep_option("method.rank=1,4")])
    assert grown.sweep == {"lr": [1e-3, 1e-2], "method.rank": [1, 4]} and len(grown.points()) == 4


def test_the_first_best_point_wins():
    assert tune_mod.choose({"a": [50.0, 70.0], "b": [60.0, 60.0], "c": [59.0, 60.0]}) == "a"
    assert tune_mod.choose({"a": [1.0], "b": [2.0]}) == "b"
    with pytest.raises(PtuningError, match="a search run has no validation accuracy"):
        tune_mod.validation_accuracy({"job": "x", "selected_val_accuracy": None})


def run(job, seed, accuracy, **config):
    return {"job": job, "status": "completed", "reported_accuracy": accuracy, "protocol": "heldout",
            "config": {"seed": seed, "protocol": "heldout", "dataset": "d", "batch_size": 32, **config}}


def test_rows_sharing_their_data_order_are_paired_and_all_are_holm_adjusted():
    full = [run("full_ft", s, a) for s, a in enumerate([90.0, 91.0, 89.5])]
    rows = {
        "same": [run("same", s, a) for s, a in enumerate([89.0, 90.1, 88.4])],  # paired: same seeds, same data
        "other": [run("other", s, a, batch_size=16) for s, a in enumerate([85.0, 86.0, 87.0])],  # another data order
        "few": [run("few", 0, 80.0)],
    }
    got = stats.compare_runs(rows, full)
    paired = stats.paired([89.0, 90.1, 88.4], [90.0, 91.0, 89.5])
    welch = stats.welch([85.0, 86.0, 87.0], [90.0, 91.0, 89.5])
    assert got["same"].test == "paired" and got["same"].p == pytest.approx(paired.p)
    assert got["other"].test == "welch" and got["other"].p == pytest.approx(welch.p)
    assert got["few"].verdict == stats.TOO_SMALL and got["few"].p_adjusted is None
    assert [got["same"].p_adjusted, got["other"].p_adjusted] == pytest.approx(stats.holm([paired.p, welch.p]))
    for name in ("same", "other"):
        c = got[name]
        assert c.verdict == (stats.DIFFERS if c.p_adjusted < 0.05 else stats.WITHIN_NOISE)
        assert f"(Holm {c.p_adjusted:.3f}, {c.test})" in c.text() or "(Holm <0.001" in c.text()
    assert got["same"].seeds_needed == stats.seeds_needed(paired.difference, stats.summarize([-1.0, -0.9, -1.1]).std)
    assert "full_ft" not in stats.compare_runs({"full_ft": full}, full)

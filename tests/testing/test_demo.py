"""`ptuning demo --quick`: every one of the ten rows learns the synthetic task, far above zero-shot; a method cut
off from the loss fails the same check; the same seed gives the same numbers."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ptuning.cli import main
from ptuning.report import kind
from ptuning.testing import demo as demo_mod
from tests.conftest import JOBS

TRAINED = ["full_ft", "soft_prompt_10", "soft_prompt_10_opendelta", "soft_prompt_1_opendelta", "adapter_8",
           "adapter_8_adapterhub", "adapter_1_adapterhub", "lora_8", "lora_8_peft", "lora_1_peft"]
QUICK = demo_mod.PROFILES["quick"]


def demo(*args: str):
    return CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "demo", "--quick", *args], catch_exceptions=False)


def result(out, job: str, seed: int = 0) -> dict:
    return json.loads((out / job / f"seed{seed}" / "result.json").read_text())


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory, cache_dir):
    return tmp_path_factory.mktemp("demo-backbone")


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory, demo_workdir):
    """The whole quick demo, once per session: (CliRunner result, output directory)."""
    out = tmp_path_factory.mktemp("demo") / "results"
    return demo("--workdir", str(demo_workdir), "--output-dir", str(out)), out


def test_every_row_learns_far_above_zero_shot(quick_demo, demo_workdir):
    run, out = quick_demo
    assert run.exit_code == 0, run.output + run.stderr
    zero = result(out, "zero_shot")["final_accuracy"]
    assert zero <= QUICK.zero_shot_max == 40
    for job in TRAINED:
        data = result(out, job)
        assert data["status"] == "completed" and data["params"]["match"], job
        assert data["final_accuracy"] >= QUICK.row_min == 85, (job, data["epochs"])
        assert data["final_accuracy"] - zero >= 45, job  # a wide margin, not a coin's worth
        assert data["config"]["epochs"] == 2 and data["config"]["batch_size"] == 16, job
        assert data["config"]["model"] == str(demo_workdir / QUICK.recipe.folder() / "model"), job
        assert data["reference"] == {"accuracy": None, "total_params": None}, job  # the report's IMDb figures do not apply
    assert result(out, "lora_8")["config"]["lr"] == 1e-3 and result(out, "soft_prompt_10")["config"]["lr"] == 0.1
    lines = run.output.splitlines()
    checks = [line for line in lines if line.startswith("learning check: ")]
    assert checks[0] == f"learning check: zero_shot: {zero:.1f}% untrained (needs at most 40%): ok"
    assert [c.split(":")[1].strip() for c in checks[1:]] == TRAINED
    assert all(c.endswith("(needs at least 85%): learned") for c in checks[1:])
    assert "  override lora_8: lr 0.001 (job file: 0.0001)" in lines
    assert run.output.count(demo_mod.CAPTION) == 3  # three banners
    assert any(line.startswith("SYNTHETIC DEMO TASK: not IMDb, not t5-small") for line in lines)  # the compact table's caption
    assert (out / "TABLES.md").read_text().startswith(f"> **SYNTHETIC DEMO TASK**: {kind.DEMO.note}\n")
    assert kind.read(out) == kind.DEMO
    assert lines[-1].startswith("demo: 11 of 11 jobs ran in ") and lines[-1].endswith(f" s; results and plots in {out}")
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["accuracy_per_epoch.png", "pareto.png", "train_time.png"]
    assert not list(out.rglob(".ptuning*lock"))


def test_the_check_fails_for_methods_whose_parameters_never_reach_the_loss(quick_demo, demo_workdir, tmp_path, monkeypatch):
    """The hand LoRA at scale 0, the soft prompt never put in, the adapter's output dropped (each still in the graph,
    times 0, so that training runs): each row stays at the backbone's own accuracy, and the learning check that
    passed above fails for exactly these three."""
    import torch

    from ptuning.methods import adapter, lora, soft_prompt

    monkeypatch.setattr(lora.LoRALinear, "forward", lambda self, x: self.base(x) + (x @ self.lora_A @ self.lora_B) * 0.0)
    monkeypatch.setattr(soft_prompt.PromptedEmbedding, "forward", lambda self, ids: self.embedding(ids) + 0.0 * self.prompt.sum())
    monkeypatch.setattr(adapter, "_run_adapter",
                        lambda module, inputs, output: output + 0.0 * module.adapter.up(torch.relu(module.adapter.down(output))))
    out = tmp_path / "cut"
    run = demo("--workdir", str(demo_workdir), "--output-dir", str(out), "zero_shot", "soft_prompt_10", "adapter_8", "lora_8")
    assert run.exit_code == 1
    assert run.stderr.strip().splitlines()[-1] == ("ptuning: error: demo: the learning check failed (see above): "
                                                   "a method did not learn the synthetic task")
    zero = result(out, "zero_shot")["final_accuracy"]
    assert zero == result(quick_demo[1], "zero_shot")["final_accuracy"]
    for job in ("lora_8", "adapter_8"):  # exactly the frozen backbone: zero-shot's answers, every epoch
        assert [e["accuracy"] for e in result(out, job)["epochs"]] == [zero, zero], job
    assert result(out, "soft_prompt_10")["final_accuracy"] < 85
    checks = [line for line in run.output.splitlines() if line.startswith("learning check: ")]
    assert checks[0].endswith(": ok") and len(checks) == 4
    assert all(c.endswith("(needs at least 85%): DID NOT LEARN") for c in checks[1:])


def test_the_same_seed_gives_the_same_numbers(quick_demo, demo_workdir, tmp_path):
    rows = ["soft_prompt_1_opendelta", "adapter_1_adapterhub", "lora_1_peft"]  # the libraries; PEFT's LoRA has dropout
    again = demo("--workdir", str(demo_workdir), "--output-dir", str(tmp_path / "again"), *rows)
    assert again.exit_code == 0, again.output + again.stderr
    for job in rows:
        first, second = result(quick_demo[1], job)["epochs"], result(tmp_path / "again", job)["epochs"]
        assert [(e["train_loss"], e["accuracy"]) for e in first] == [(e["train_loss"], e["accuracy"]) for e in second], job
    other = demo("--workdir", str(demo_workdir), "--output-dir", str(tmp_path / "seed1"), "--seed", "1", "lora_1_peft")
    assert other.exit_code == 0, other.output + other.stderr
    seeded = result(tmp_path / "seed1", "lora_1_peft", seed=1)
    assert seeded["config"]["seed"] == 1
    assert seeded["epochs"][0]["train_loss"] != result(quick_demo[1], "lora_1_peft")["epochs"][0]["train_loss"]


def test_a_row_that_fails_is_one_line_the_others_run_and_the_demo_exits_1(demo_workdir, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # as if PEFT were not installed
    out = tmp_path / "failing"
    run = demo("--workdir", str(demo_workdir), "--output-dir", str(out), "zero_shot", "lora_1_peft")
    assert run.exit_code == 1
    errors = run.stderr.strip().splitlines()
    assert errors[0].startswith("ptuning: error: [lora_1_peft] lora/peft needs the package 'peft', which could not be imported")
    assert errors[-1] == "ptuning: error: demo: 1 of 2 jobs failed: lora_1_peft"
    assert "learning check: lora_1_peft: no completed result: FAILED" in run.output.splitlines()
    assert result(out, "zero_shot")["status"] == "completed" and not (out / "lora_1_peft" / "seed0" / "result.json").exists()


def test_a_workdir_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("kept")
    run = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "demo", "--workdir", str(tmp_path / "a-file" / "w"),
                                    "--output-dir", str(tmp_path / "demo"), "zero_shot"])
    assert run.exit_code == 1, run.exception
    assert run.stderr.strip() == (f"ptuning: error: cannot build the synthetic backbone in {tmp_path / 'a-file' / 'w'}: "
                                  "Not a directory; pass --workdir with a writable directory")
    assert not (tmp_path / "demo").exists() and (tmp_path / "a-file").read_text() == "kept"


def test_an_unknown_job_or_no_jobs_is_one_line_before_anything_is_built(tmp_path):
    run = CliRunner().invoke(main, ["--jobs-dir", str(JOBS), "demo", "--workdir", str(tmp_path / "w"),
                                    "--output-dir", str(tmp_path / "demo"), "lora_9"])
    assert run.exit_code == 1, run.exception
    assert run.stderr.strip().startswith(f"ptuning: error: no job named 'lora_9' in {JOBS}; nearest: ")
    assert not (tmp_path / "w").exists() and not (tmp_path / "demo").exists()
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "_defaults.yaml").write_text((JOBS / "_defaults.yaml").read_text())
    run = CliRunner().invoke(main, ["--jobs-dir", str(tmp_path / "jobs"), "demo", "--workdir", str(tmp_path / "w")])
    assert run.exit_code == 1, run.exception
    assert run.stderr.strip() == f"ptuning: error: no job files (*.yaml) in {tmp_path / 'jobs'}; pass --jobs-dir with the folder of job files"
    assert not (tmp_path / "w").exists()


def fake(job: str, final: float, seed: int = 0, status: str = "completed") -> dict:
    return {"job": job, "status": status, "config": {"seed": seed, "protocol": "faithful"}, "final_accuracy": final}


def test_check_learning_lines_and_verdicts():
    from ptuning.settings import load_job

    jobs = [load_job(name, JOBS) for name in ("zero_shot", "full_ft", "lora_8", "adapter_8")]
    results = {"zero_shot": [fake("zero_shot", 12.0)], "full_ft": [fake("full_ft", 96.0), fake("full_ft", 50.0, seed=1)],
               "lora_8": [fake("lora_8", 84.9)], "adapter_8": [fake("adapter_8", 99.0, status="failed")]}
    passed, lines = demo_mod.check_learning(jobs, results, QUICK, seed=0)
    assert not passed
    assert lines == [
        "learning check: zero_shot: 12.0% untrained (needs at most 40%): ok",
        "learning check: full_ft: 96.0% after the last epoch (needs at least 85%): learned",
        "learning check: lora_8: 84.9% after the last epoch (needs at least 85%): DID NOT LEARN",
        "learning check: adapter_8: no completed result: FAILED",
    ]
    assert demo_mod.check_learning(jobs[:2], results, QUICK, seed=0)[0]
    assert not demo_mod.check_learning(jobs[:2], results, QUICK, seed=1)[0]  # seed 1: no zero-shot result, full_ft 50%
    results["zero_shot"] = [fake("zero_shot", 40.1)]
    assert demo_mod.check_learning(jobs[:1], results, QUICK, seed=0) == (
        False, ["learning check: zero_shot: 40.1% untrained (needs at most 40%): TOO HIGH: the task is not new to the backbone"])


def test_the_demos_plots_read_at_a_glance(quick_demo):
    """The three plots of the demo's own results: every row named apart, no label over another, the accuracy axis
    inside 0-100 %, whole epochs, and the synthetic task in every title."""
    from ptuning.report import plots
    from ptuning.report.results import load_results
    from ptuning.settings import load_all_jobs
    from tests.report.test_plots import _label_boxes, _overlapping

    run, out = quick_demo
    assert run.exit_code == 0
    rows = plots.plotted_rows(load_all_jobs(JOBS), load_results(out, []))
    assert len(rows) == 11
    figures = [plots.accuracy_per_epoch_figure(rows, kind.DEMO), plots.pareto_figure(rows, kind.DEMO),
               plots.train_time_figure(rows, kind.DEMO)]
    for fig in figures:
        assert fig.axes[0].get_title().endswith(" — synthetic demo task")
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert len(legend) == len(set(legend)) == 11
    pareto = figures[1]
    pareto.canvas.draw()
    boxes = _label_boxes(pareto)
    assert sorted(boxes, key=int) == [str(n) for n in range(1, 11)] and _overlapping(boxes) == []
    for fig in figures[:2]:
        low, high = fig.axes[0].get_ylim()
        assert -5 < low < high < 105 and high - low >= 5
    assert list(figures[0].axes[0].get_xticks()) == [1, 2]  # the quick demo's two epochs, nothing in between

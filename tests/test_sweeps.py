"""Grids in job files: `sweep:` expands a job into named points, each a run of its own (skipped when done, resumable,
runnable by name), and a grid that would start too many runs needs --yes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ptuning.cli import main
from ptuning.errors import PtuningError
from ptuning.report.results import load_results, run_dir
from ptuning.settings import load_job, load_job_file
from tests.run.test_reliability import write_jobs

LORA = "title: L\nrow: 3\nmethod: {name: lora, implementation: hand, rank: 8}\nlr: 1.0e-3\n"
GRID = LORA + "sweep: {lr: [1.0e-3, 3.0e-2], rank: [1, 2]}\n"


def job_file(tmp_path: Path, text: str, name: str = "lora") -> Path:
    directory = tmp_path / "jobs"
    directory.mkdir(exist_ok=True)
    (directory / "_defaults.yaml").write_text((Path(__file__).parent.parent / "jobs" / "_defaults.yaml").read_text())
    (directory / f"{name}.yaml").write_text(text)
    return directory / f"{name}.yaml"


def test_a_grid_expands_into_named_points_in_order(tmp_path):
    job = load_job_file(job_file(tmp_path, GRID))
    assert job.sweep == {"lr": [1e-3, 3e-2], "method.rank": [1, 2]}
    points = job.points()
    assert [p.name for p in points] == ["lora/lr=1e-3,rank=1", "lora/lr=1e-3,rank=2", "lora/lr=0.03,rank=1", "lora/lr=0.03,rank=2"]
    last = points[-1]
    assert (last.variant, last.settings.lr, last.knobs["rank"], last.base_name) == ("lr=0.03,rank=2", 3e-2, 2, "lora")
    assert last.sweep == {} and last.reference_accuracy is None
    assert last.config()["variant"] == "lr=0.03,rank=2" and "variant" not in job.config()
    assert run_dir(tmp_path, last.name, 0) == tmp_path / "lora" / "lr=0.03,rank=2" / "seed0"
    assert load_job_file(job_file(tmp_path, LORA + "sweep: {method.rank: [4]}\n")).points()[0].name == "lora/rank=4"


@pytest.mark.parametrize("sweep, message", [
    ("[1, 2]", "'sweep' must be a mapping of settings or method knobs to lists of values, e.g. sweep: {lr:"),
    ("{}", "'sweep' must be a mapping"),
    ("{lr: []}", "'sweep.lr' must be a non-empty list of values, got []"),
    ("{lr: 1.0e-3}", "'sweep.lr' must be a non-empty list of values, got 0.001"),
    ("{lrr: [1]}", "'sweep.lrr' is neither a setting nor a knob of lora/hand (did you mean 'lr'?)"),
    ("{tokens: [1]}", "'sweep.tokens' is neither a setting nor a knob of lora/hand"),
    ("{seeds: [[0], [1]]}", "'sweep.seeds' cannot be swept; give the seeds with 'seeds' or --seeds"),
    ("{rank: [0, 1]}", "(sweep): 'method.rank' must be at least 1, got 0"),
    ("{lr: [-1.0]}", "(sweep): 'lr' must be greater than 0"),
    ("{rank: [1, 1]}", "'sweep.rank' has a value twice: [1, 1]"),
    ("{model: [/models/a, /models/b]}", "'sweep.model' value '/models/a' cannot name a point"),
    ("{rank: [1], method.rank: [2]}", "'sweep' names 'rank' twice"),
])
def test_a_bad_grid_is_one_line_naming_the_file(tmp_path, sweep, message):
    path = job_file(tmp_path, LORA + f"sweep: {sweep}\n")
    with pytest.raises(PtuningError) as info:
        load_job_file(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_point_is_loaded_by_its_name(tmp_path):
    directory = job_file(tmp_path, GRID).parent
    point = load_job("lora/lr=0.03,rank=1", directory)
    assert point.name == "lora/lr=0.03,rank=1" and point.settings.lr == 3e-2 and point.knobs["rank"] == 1
    with pytest.raises(PtuningError, match=r"lora has no point 'lr=0.03,rank=3'; nearest: lr=0.03,rank=2, lr=0.03,rank=1 \(its 4 points: `ptuning list --points lora`\)"):
        load_job("lora/lr=0.03,rank=3", directory)
    (directory / "plain.yaml").write_text(LORA)
    with pytest.raises(PtuningError, match=r"plain has no sweep: its points cannot be named"):
        load_job("plain/lr=1", directory)


def invoke(jobs_dir: Path, *args: str):
    return CliRunner().invoke(main, ["--jobs-dir", str(jobs_dir), *args], env={"HF_HUB_OFFLINE": "1"}, catch_exceptions=False)


@pytest.fixture
def grid_jobs(tmp_path, tiny_model_dir, tiny_data_dir) -> Path:
    return write_jobs(tmp_path / "jobs", tiny_model_dir, tiny_data_dir, {"lora": GRID})


def test_running_a_job_with_a_grid_runs_each_point_once(grid_jobs, tmp_path):
    out = tmp_path / "out"
    result = invoke(grid_jobs, "run", "lora", "--device", "cpu", "--output-dir", str(out), "--epochs", "1")
    assert result.exit_code == 0, result.output + result.stderr
    points = ["lr=1e-3,rank=1", "lr=1e-3,rank=2", "lr=0.03,rank=1", "lr=0.03,rank=2"]
    for point in points:
        record = json.loads((out / "lora" / point / "seed0" / "result.json").read_text())
        assert record["job"] == f"lora/{point}" and record["variant"] == point and record["status"] == "completed"
        assert record["config"]["lr"] == float(point.split(",")[0].split("=")[1])
        assert record["config"]["method"]["rank"] == int(point.split("rank=")[1])
    assert sorted(load_results(out)) == sorted(f"lora/{p}" for p in points)
    assert not (out / "lora" / "seed0").exists()  # the job itself does not run: its points do
    again = invoke(grid_jobs, "run", "lora", "--device", "cpu", "--output-dir", str(out), "--epochs", "1")
    assert again.exit_code == 0 and again.output.count("already completed with this configuration") == 4
    tables = invoke(grid_jobs, "tables", "--wide", "--results", str(out))
    for point in points:
        assert f"| lora/{point} " in tables.output
    one = invoke(grid_jobs, "run", "lora/lr=1e-3,rank=2", "--device", "cpu", "--output-dir", str(out), "--epochs", "1")
    assert one.exit_code == 0 and one.output.count("already completed") == 1


def test_a_grid_past_the_limit_needs_yes_and_writes_nothing_before(grid_jobs, tmp_path):
    (grid_jobs / "lora.yaml").write_text(LORA + "sweep: {lr: [1.0e-3, 2.0e-3, 3.0e-3, 4.0e-3, 5.0e-3], rank: [1, 2, 3, 4, 5]}\n")
    out = tmp_path / "out"
    result = invoke(grid_jobs, "run", "lora", "--device", "cpu", "--output-dir", str(out), "--seeds", "0,1")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("ptuning: error: this would start 50 runs (lora: 25 points × 2 seeds); pass --yes to run "
                                     "them, or make the grid smaller")
    assert not out.exists()


def test_points_run_in_processes_of_their_own_under_concurrency(grid_jobs, tmp_path):
    (grid_jobs / "lora.yaml").write_text(LORA + "sweep: {rank: [1, 2]}\n")
    out = tmp_path / "out"
    result = invoke(grid_jobs, "run-all", "--device", "cpu", "--output-dir", str(out), "--epochs", "1", "--concurrency", "2")
    assert result.exit_code == 0, result.output + result.stderr
    assert "running 2 jobs, 2 at a time" in result.output
    assert sorted(load_results(out)) == ["lora/rank=1", "lora/rank=2"]
    assert sorted(p.name for p in (out / "logs" / "lora").iterdir()) == ["rank=1.log", "rank=2.log"]


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_a_failing_point_is_counted_among_the_runs_of_the_grid(grid_jobs, tmp_path, concurrency):
    (grid_jobs / "lora.yaml").write_text(LORA + "sweep: {lr: [1.0e-3, 1.0e+30]}\n")
    out = tmp_path / "out"
    result = invoke(grid_jobs, "run-all", "--device", "cpu", "--output-dir", str(out), "--epochs", "1", "--seeds", "0,1",
                    "--concurrency", concurrency)
    assert result.exit_code == 1
    assert "ptuning: 2 runs completed, 0 skipped (already completed), 2 failed (lora/lr=1e30 seed 0, lora/lr=1e30 seed 1)" \
        in result.stdout
    assert result.stderr.splitlines()[-1] == "ptuning: 2 of 4 runs failed: lora/lr=1e30 seed 0, lora/lr=1e30 seed 1"


@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_a_point_that_needs_a_gpu_is_refused_before_anything_runs(grid_jobs, tmp_path, concurrency):
    (grid_jobs / "lora.yaml").write_text(LORA + "sweep: {compile: [false, true]}\n")
    out = tmp_path / "out"
    result = invoke(grid_jobs, "run-all", "--device", "cpu", "--output-dir", str(out), "--concurrency", concurrency)
    assert result.exit_code == 1
    assert result.stderr.strip() == ("ptuning: error: lora/compile=true: compile: true (--compile) needs a CUDA device, and "
                                     "this run is on cpu; drop --compile (or pass --no-compile), or run on a GPU")
    assert not out.exists()


def test_list_shows_the_points(grid_jobs):
    result = invoke(grid_jobs, "list", "--points", "lora")
    assert result.exit_code == 0
    assert [line.split("|")[2].strip() for line in result.output.splitlines()[2:]] == [
        "lora", "lora/lr=1e-3,rank=1", "lora/lr=1e-3,rank=2", "lora/lr=0.03,rank=1", "lora/lr=0.03,rank=2"]

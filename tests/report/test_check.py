"""ptuning check: pass, fail and missing-row cases on hand-made result files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from ptuning.cli import main
from ptuning.errors import PtuningError
from ptuning.report.check import DEFAULT_TOLERANCE, check
from ptuning.report.results import RESULT_FILE, run_dir, write_result
from ptuning.settings import load_all_jobs

JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs"


@pytest.fixture(scope="module")
def jobs():
    """The jobs that have a reference accuracy (rows without one, e.g. zero-shot, are not checked)."""
    return [job for job in load_all_jobs(JOBS_DIR) if job.reference_accuracy is not None]


def write(results: Path, job, accuracy: float | None = None, status: str = "completed", protocol: str = "faithful", **config) -> None:
    """A result file shaped like the runner's, with only the fields check and tables read."""
    result = {
        "job": job.name,
        "title": job.title,
        "row": job.row,
        "status": status,
        "config": {**job.config(), "protocol": protocol, **config},
        "reference": {"accuracy": job.reference_accuracy, "total_params": job.reference_total_params},
    }
    if status == "completed":
        result["max_accuracy"] = job.reference_accuracy if accuracy is None else accuracy
    else:
        result["reason"] = "CUDA out of memory"
    seed = config.get("seed", job.config().get("seed", 0))
    write_result(run_dir(results, job.name, seed, protocol) / RESULT_FILE, result)


def write_all(results: Path, jobs, offset: float = 0.0) -> None:
    for job in jobs:
        write(results, job, job.reference_accuracy + offset)


def test_all_rows_within_tolerance_pass(tmp_path, jobs):
    write_all(tmp_path, jobs, offset=-0.4)
    ok, lines = check(tmp_path, 0.5, jobs)
    assert ok, "\n".join(lines)
    assert sum(line.startswith("ok") for line in lines) == len(jobs)
    assert lines[-1].startswith(f"check: {len(jobs)} within")


def test_tolerance_is_inclusive_and_two_sided(tmp_path, jobs):
    job = jobs[0]
    write(tmp_path, job, job.reference_accuracy + 1.0)
    assert check(tmp_path, 1.0, [job])[0]
    write(tmp_path, job, job.reference_accuracy + 1.3)  # too good is as suspicious as too bad
    assert not check(tmp_path, 1.0, [job])[0]
    write(tmp_path, job, job.reference_accuracy - 1.3)
    assert not check(tmp_path, 1.0, [job])[0]


def test_row_out_of_tolerance_fails(tmp_path, jobs):
    write_all(tmp_path, jobs)
    bad = jobs[3]
    write(tmp_path, bad, bad.reference_accuracy - 2.5)
    ok, lines = check(tmp_path, DEFAULT_TOLERANCE, jobs)
    assert not ok
    fails = [line for line in lines if line.startswith("FAIL")]
    assert fails == [f"FAIL {bad.name:<28} reference {bad.reference_accuracy:.1f}%, measured {bad.reference_accuracy - 2.5:.2f}%, "
                     f"distance -2.50 points (tolerance {DEFAULT_TOLERANCE:g})"]


def test_missing_row_fails(tmp_path, jobs):
    write_all(tmp_path, jobs[1:])
    ok, lines = check(tmp_path, DEFAULT_TOLERANCE, jobs)
    assert not ok
    fails = [line for line in lines if line.startswith("FAIL")]
    assert fails == [f"FAIL {jobs[0].name:<28} reference {jobs[0].reference_accuracy:.1f}%, measured –, distance – "
                     f"(tolerance {DEFAULT_TOLERANCE:g}); incomplete: did not run (no result in {tmp_path})"]


def test_failed_row_fails(tmp_path, jobs):
    write_all(tmp_path, jobs)
    write(tmp_path, jobs[2], status="failed")
    ok, lines = check(tmp_path, DEFAULT_TOLERANCE, jobs)
    assert not ok
    assert any(line.startswith(f"FAIL {jobs[2].name} ") and line.endswith("measured –, distance – (tolerance 1); incomplete: "
                                                                         "the run failed: CUDA out of memory") for line in lines)


def test_seeds_are_compared_by_their_mean_like_the_table(tmp_path, jobs):
    job = jobs[0]
    write(tmp_path, job, job.reference_accuracy - 1.6, seed=0)  # alone, seed 0 is out of tolerance
    write(tmp_path, job, job.reference_accuracy + 1.0, seed=1)
    ok, lines = check(tmp_path, 0.5, [job])
    assert ok, lines
    assert lines[0] == (f"ok   {job.name:<28} reference {job.reference_accuracy:.1f}%, measured {job.reference_accuracy - 0.3:.2f}% "
                        "(mean of 2 seeds), distance -0.30 points (tolerance 0.5)")
    write(tmp_path, job, job.reference_accuracy + 1.0, seed=2)  # the mean moves to +0.13
    assert check(tmp_path, 0.1, [job])[0] is False and "+0.13 points" in check(tmp_path, 0.1, [job])[1][0]


def test_a_failed_seed_fails_the_row(tmp_path, jobs):
    job = jobs[0]
    write(tmp_path, job, job.reference_accuracy, seed=0)
    write(tmp_path, job, status="failed", seed=1)
    ok, lines = check(tmp_path, DEFAULT_TOLERANCE, [job])
    assert not ok and lines[0] == (f"FAIL {job.name:<28} reference {job.reference_accuracy:.1f}%, measured "
                                   f"{job.reference_accuracy:.2f}%, distance +0.00 points (tolerance {DEFAULT_TOLERANCE:g}); "
                                   "incomplete: seed 1 failed: CUDA out of memory")


def test_heldout_results_are_not_compared_with_the_faithful_reference(tmp_path, jobs):
    job = jobs[0]
    write(tmp_path, job, job.reference_accuracy, protocol="heldout")
    ok, lines = check(tmp_path, DEFAULT_TOLERANCE, [job])
    assert not ok and lines[0].endswith("incomplete: only heldout-protocol results; the reference is the faithful protocol's "
                                        "figure (run without --protocol heldout)")
    write(tmp_path, job, job.reference_accuracy + 0.2)  # with a faithful run beside it, that one is compared
    ok, lines = check(tmp_path, DEFAULT_TOLERANCE, [job])
    assert ok and "+0.20 points" in lines[0]


def test_partial_run_does_not_count(tmp_path, jobs):
    job = jobs[0]
    write(tmp_path, job, job.reference_accuracy, train_limit=256, epochs=1)
    ok, lines = check(tmp_path, DEFAULT_TOLERANCE, [job])
    assert not ok
    assert lines[0].endswith(f"; incomplete: the run: not a full-protocol run (train_limit=256, epochs=1 (job file: {job.settings.epochs}))")
    assert f"measured {job.reference_accuracy:.2f}%, distance +0.00 points" in lines[0]  # the figure is still shown
    write(tmp_path, job, job.reference_accuracy, epochs=job.settings.epochs - 1)  # fewer epochs alone is a partial run too
    ok, lines = check(tmp_path, DEFAULT_TOLERANCE, [job])
    assert not ok and f"not a full-protocol run (epochs={job.settings.epochs - 1} (job file: {job.settings.epochs}))" in lines[0]


def test_every_reason_a_row_is_incomplete_is_named(tmp_path, jobs):
    job = jobs[0]
    write(tmp_path, job, job.reference_accuracy + 0.2, seed=0, eval_limit=500)
    write(tmp_path, job, job.reference_accuracy - 0.2, seed=1, train_limit=1000, epochs=2)
    write(tmp_path, job, status="failed", seed=2)
    ok, lines = check(tmp_path, DEFAULT_TOLERANCE, [job])
    assert not ok
    assert lines[0] == (f"FAIL {job.name:<28} reference {job.reference_accuracy:.1f}%, measured {job.reference_accuracy:.2f}% "
                        f"(mean of 2 seeds), distance +0.00 points (tolerance {DEFAULT_TOLERANCE:g}); incomplete: "
                        "seed 0: not a full-protocol run (eval_limit=500); "
                        f"seed 1: not a full-protocol run (train_limit=1000, epochs=2 (job file: {job.settings.epochs})); "
                        "seed 2 failed: CUDA out of memory")


def test_empty_results_dir_fails_and_missing_dir_is_an_error(tmp_path, jobs):
    ok, lines = check(tmp_path, DEFAULT_TOLERANCE, jobs)
    assert not ok and all(line.startswith("FAIL") for line in lines[:-1])
    with pytest.raises(PtuningError, match="does not exist"):
        check(tmp_path / "nope", DEFAULT_TOLERANCE, jobs)


def test_job_without_reference_is_skipped(tmp_path, jobs):
    write_all(tmp_path, jobs)
    unreferenced = dataclasses.replace(jobs[0], name="no_reference_row", reference_accuracy=None)
    ok, lines = check(tmp_path, DEFAULT_TOLERANCE, [*jobs, unreferenced])
    assert ok, "\n".join(lines)
    assert any(line.startswith("SKIP") and "no_reference_row" in line for line in lines)
    assert "1 without a reference" in lines[-1]
    ok, lines = check(tmp_path, DEFAULT_TOLERANCE, [unreferenced])  # nothing checked is not a pass
    assert not ok and lines[-1] == f"check: 0 within ±{DEFAULT_TOLERANCE:g} points, 0 failed, 1 without a reference (nothing to check)"


def test_cli_exit_codes(tmp_path, jobs):
    runner = CliRunner()
    args = ["--jobs-dir", str(JOBS_DIR), "check", "--results", str(tmp_path)]
    write_all(tmp_path, jobs, offset=0.3)
    result = runner.invoke(main, args + ["--tolerance", "0.5"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, args + ["--tolerance", "0.2"])
    assert result.exit_code == 1 and "FAIL" in result.output
    result = runner.invoke(main, args)  # the default tolerance
    assert result.exit_code == (0 if DEFAULT_TOLERANCE >= 0.3 else 1)
    result = runner.invoke(main, ["--jobs-dir", str(JOBS_DIR), "check", "--results", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "does not exist" in result.output


@pytest.mark.parametrize("tolerance", ["nan", "-0.5"])
def test_cli_refuses_a_tolerance_that_is_not_a_distance(tmp_path, jobs, tolerance):
    write_all(tmp_path, jobs)
    result = CliRunner().invoke(main, ["--jobs-dir", str(JOBS_DIR), "check", "--results", str(tmp_path), "--tolerance", tolerance])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"ptuning: error: tolerance must be >= 0 points, got {float(tolerance)}"
    assert result.stdout == ""


def test_help_says_what_is_compared():
    result = CliRunner().invoke(main, ["check", "--help"], terminal_width=100)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "the faithful protocol's max test accuracy over epochs, mean over seeds" in text
    assert "the reference, the measured figure and the distance" in text

"""A loud CPU fallback (`--device auto` without a GPU refuses a full-size run, with a measured estimate), and the
summary a command that runs jobs ends with. Tiny model and data, CPU; "full size" is made small for the tests."""

from __future__ import annotations

import os
import re
import time

import pytest
from click.testing import CliRunner

from ptuning.cli import main
from ptuning.errors import PtuningError
from ptuning.report.results import RESULT_FILE, run_dir, write_result
from ptuning.run import cpu, summary
from ptuning.settings import load_job
from tests.run.test_reliability import JOB_A, write_jobs

ZERO = "title: Z\nrow: 0\nmethod: {name: zero_shot, implementation: hand}\n"


@pytest.fixture
def jobs_dir(tmp_path, tiny_model_dir, tiny_data_dir):
    # the tiny data has 64 training reviews; the jobs' defaults limit them to 16
    return write_jobs(tmp_path / "jobs", tiny_model_dir, tiny_data_dir, {"a": JOB_A, "z": ZERO})


def cli(jobs_dir, *args):
    return CliRunner().invoke(main, ["--jobs-dir", str(jobs_dir), *args], env={"HF_HUB_OFFLINE": "1"}, catch_exceptions=False)


REFUSAL = re.compile(
    r"ptuning: error: no CUDA GPU here, and a trains on 16 reviews per epoch: one epoch would take about \d+ s on this CPU "
    r"\(\d+\.\d\d s per review of 32 tokens, measured\); 2 epochs about \d+ s\. Run on a GPU, pass --device cpu to run here "
    r"anyway, or try a short run with --train-limit 10")


def test_run_all_with_device_auto_refuses_a_full_size_cpu_run_in_one_line(jobs_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "FULL_SIZE", 10)  # 16 reviews count as full size here
    out = tmp_path / "results"
    started = time.perf_counter()
    result = cli(jobs_dir, "run-all", "--output-dir", str(out))
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1 and REFUSAL.fullmatch(result.stderr.strip()), result.stderr
    assert result.stdout == "" and not out.exists()  # nothing ran, not even zero-shot, the first job
    assert time.perf_counter() - started < 60  # the estimate itself is quick (seconds on the tiny model)
    ran = cli(jobs_dir, "run-all", "--device", "cpu", "--output-dir", str(out))  # asked for: it runs
    assert ran.exit_code == 0, ran.output
    assert (run_dir(out, "a", 0) / RESULT_FILE).is_file() and (run_dir(out, "z", 0) / RESULT_FILE).is_file()


def test_smaller_runs_and_runs_that_train_nothing_go_ahead_with_device_auto(jobs_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "FULL_SIZE", 10)
    out = tmp_path / "results"
    assert cli(jobs_dir, "run", "a", "--train-limit", "8", "--output-dir", str(out)).exit_code == 0  # 8 <= 10
    assert cli(jobs_dir, "run", "z", "--output-dir", str(out)).exit_code == 0  # zero-shot: no training at all
    refused = cli(jobs_dir, "run", "a", "--output-dir", str(out), "--force")
    assert refused.exit_code == 1 and REFUSAL.fullmatch(refused.stderr.strip())


def test_train_reviews_after_the_heldout_split_and_the_limit(jobs_dir):
    job = load_job("a", jobs_dir)
    splits = {"train": list(range(25_000))}
    assert cpu.train_reviews(job.override(train_limit=None), splits) == 25_000
    assert cpu.train_reviews(job.override(train_limit=None, protocol="heldout"), splits) == 22_500
    assert cpu.train_reviews(job.override(train_limit=3_000), splits) == 3_000
    assert cpu.FULL_SIZE == 5_000


def test_duration_and_short_limit_words():
    assert [cpu.duration(s) for s in (42, 720, 3 * 3600 + 1800, 14 * 3600, 6.2 * 86400)] == ["42 s", "12 min", "3.5 h", "14 h", "6.2 days"]
    assert cpu._short_limit(1.8) == 300 and cpu._short_limit(0.001) == 5_000 and cpu._short_limit(100.0) == 100


# -- the summary ----------------------------------------------------------------------------------------------


def test_run_all_ends_with_the_summary_and_says_what_was_skipped(jobs_dir, tmp_path):
    out = tmp_path / "results"
    first = cli(jobs_dir, "run-all", "--device", "cpu", "--output-dir", str(out))
    assert first.exit_code == 0, first.output
    tail = first.stdout.rstrip().splitlines()[-3:]
    assert re.fullmatch(r"ptuning: 2 runs completed, 0 skipped \(already completed\), 0 failed; \d+ s in all", tail[0]), tail
    assert tail[1:] == [f"results: {out}", f"next: ptuning check --results {out}   (each row against the report's figure)"]
    again = cli(jobs_dir, "run-all", "--device", "cpu", "--output-dir", str(out))
    assert re.fullmatch(r"ptuning: 0 runs completed, 2 skipped \(already completed\), 0 failed; \d+ s in all",
                        again.stdout.rstrip().splitlines()[-3])


def _result(status="completed"):
    return {"job": "a", "status": status, "config": {"seed": 0}, **({"reason": "boom"} if status == "failed" else {})}


def test_tally_reads_each_runs_outcome(jobs_dir, tmp_path):
    job = load_job("a", jobs_dir).override(seeds=[0, 1, 2, 3, 4])
    old = time.time() - 3600
    for seed, status in ((0, "completed"), (1, "completed"), (2, "failed")):
        path = run_dir(tmp_path, "a", seed) / RESULT_FILE
        write_result(path, _result(status))
        if seed == 0:
            os.utime(path, (old, old))  # finished before the command started
    started = time.time() - 60
    tally = summary.tally([job], tmp_path, started, failed=["a seed 3", "broken_job"])
    assert tally == summary.Tally(completed=["a seed 1"], skipped=["a seed 0"], failed=["a seed 2", "a seed 3", "broken_job"],
                                  not_run=["a seed 4"])
    lines = summary.summary_lines(tally, 7384, tmp_path, ["ptuning plots --results x"])
    assert lines == [
        "ptuning: 1 run completed, 1 skipped (already completed), 3 failed (a seed 2, a seed 3, broken_job), "
        "1 not run (a seed 4); 2 h 03 min in all",
        f"results: {tmp_path}",
        "next: ptuning plots --results x",
    ]
    assert [summary.duration(s) for s in (0.4, 42, 185, 7384)] == ["0 s", "42 s", "3 min 05 s", "2 h 03 min"]


def test_a_refused_or_failing_estimate_is_one_line(jobs_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "FULL_SIZE", 10)
    monkeypatch.setattr(cpu, "seconds_per_review", lambda job: (_ for _ in ()).throw(PtuningError("cannot load model 'x'")))
    result = cli(jobs_dir, "run", "a", "--output-dir", str(tmp_path / "r"))
    assert result.exit_code == 1 and result.stderr == "ptuning: error: cannot load model 'x'\n"

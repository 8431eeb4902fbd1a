"""`ptuning submit` against a real SLURM: `make test-slurm` starts a private one-node cluster (scripts/slurm-local.sh:
two CPUs, two fake GPUs, accounting) and runs these. Elsewhere they are skipped, with the reason, unless
PTUNING_REQUIRE_SLURM=1 (CI) makes a missing cluster a failure.

Every run is a short CPU run on the tiny assets; results are compared exactly (per-epoch loss and accuracy)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ptuning.run.interrupt import PAUSE_ENV
from tests.cluster.conftest import JOB_NAMES, all_metrics, metrics, ptuning, run_args
from tests.conftest import REPO

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster() -> None:
    try:
        found = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        problem = None if found.returncode == 0 else (found.stderr.strip().splitlines() or ["sinfo failed"])[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem:
        reason = (f"no SLURM cluster to submit to ({problem}); `make test-slurm` starts a private one where it can "
                  "(root, Debian packages)")
        if os.environ.get("PTUNING_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def sacct_states(job: str) -> dict[str, str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State"], capture_output=True, text=True, check=True)
    return dict(line.split("|", 1) for line in out.stdout.split())


class Background:
    """`ptuning submit ... --wait` running in the background; its output is collected line by line."""

    def __init__(self, jobs_dir: Path, *args: str, env: dict | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ptuning.cli", "--jobs-dir", str(jobs_dir), "submit", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})})
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def job_id(self, timeout: float = 60) -> str:
        """The SLURM job (array) id the submission printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.out:
                found = re.match(r"ptuning: submitted \d+ runs? as SLURM job (?:array )?(\d+)", line)
                if found:
                    return found.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail("no job id printed:\n" + "\n".join(self.out + self.err))

    def finish(self, timeout: float) -> float:
        """Wait for the submission to end; returns how long that took."""
        start = time.monotonic()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"still waiting after {timeout} s:\n" + "\n".join(self.out + self.err))
        for reader in self.readers:
            reader.join(timeout=5)
        return time.monotonic() - start


def wait_for_line(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    pytest.fail(f"{text!r} never appeared in {path}:\n" + (path.read_text() if path.exists() else "(no log)"))


@pytest.fixture(scope="module")
def array(two_jobs, tiny_model_dir, tiny_data_dir, tmp_path_factory) -> dict:
    """Both jobs × seeds 0 and 1: four tasks of one array, two at a time (2 CPUs), sharing one --output-dir."""
    out = tmp_path_factory.mktemp("array")
    args = ["--seeds", "0,1", *run_args(tiny_model_dir, tiny_data_dir), "--output-dir", str(out), "--cpus-per-job", "1"]
    started = time.monotonic()
    done = ptuning(two_jobs, "submit", *args, "--wait", "--poll-seconds", "1")
    return {"out": out, "args": args, "done": done, "seconds": time.monotonic() - started}


def test_an_array_of_four_runs_on_two_gpus_equals_run_all_and_fills_the_tables(array, two_jobs, reference):
    done, out = array["done"], array["out"]
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    found = re.fullmatch(r"ptuning: submitted 4 runs as SLURM job array (\d+) \(4 tasks on partition (\w+)\)", lines[0])
    assert found, lines[0]
    job = found.group(1)
    assert lines[1] == f"ptuning: logs: {out}/logs/slurm/{job}_TASK_0_log.out; which task runs what: {out}/logs/slurm/{job}_runs.tsv"
    assert "ptuning: 4 of 4 runs done, 0 running, 0 waiting, 0 failed" in lines
    assert sacct_states(job) == {f"{job}_{i}": "COMPLETED" for i in range(4)}
    # four tasks wrote into one output folder at the same time, and each run equals a plain run-all's
    assert all_metrics(out) == reference
    gpus = [re.search(r"CUDA_VISIBLE_DEVICES=(\S+),", (out / "logs" / "slurm" / f"{job}_{i}_0_log.out").read_text()).group(1)
            for i in range(4)]
    assert sorted(set(gpus)) == ["0", "1"], gpus  # each task got one of the two GPUs, and both were used
    tables = ptuning(two_jobs, "tables", "--wide", "--results", str(out))
    assert tables.returncode == 0, tables.stderr
    for name in JOB_NAMES:
        row = next(line for line in tables.stdout.splitlines() if f"| {name} " in line and "(n=" in line)
        assert "(n=2)" in row
    assert any(re.match(r"^ +8  LoRA, hand-written .* \(2\) ", line) for line in lines)  # --wait ended with the compact table


def test_resubmitting_skips_the_completed_runs(array, two_jobs):
    assert array["done"].returncode == 0
    before = subprocess.run(["sacct", "-n", "-X", "-o", "JobID"], capture_output=True, text=True).stdout
    again = ptuning(two_jobs, "submit", *array["args"])
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"ptuning: all 4 runs are already completed in {array['out']}; nothing to submit")
    assert subprocess.run(["sacct", "-n", "-X", "-o", "JobID"], capture_output=True, text=True).stdout == before


@pytest.fixture(scope="module")
def two_epochs(two_jobs, tiny_model_dir, tiny_data_dir, tmp_path_factory) -> tuple[list[str], dict]:
    """lora_8, seeds 0 and 1, two epochs of two steps: the arguments, and each seed's uninterrupted result."""
    args = ["lora_8", "--seeds", "0,1", *run_args(tiny_model_dir, tiny_data_dir, epochs=2, train=16, evals=8)]
    out = tmp_path_factory.mktemp("two-epochs")
    done = ptuning(two_jobs, "run", *args, "--output-dir", str(out))
    assert done.returncode == 0, done.stderr
    return args, {seed: metrics(out, "lora_8", seed) for seed in (0, 1)}


def test_requeue_and_time_limit_warning_stop_at_a_checkpoint_and_the_requeued_tasks_resume_it(two_jobs, two_epochs, tmp_path):
    """Task 0 is requeued by hand (`scontrol requeue`: SIGTERM); task 1 gets the time-limit warning (submitit's
    SIGUSR2, as SLURM sends it `--signal-before` seconds before the limit). Both are paused after step 1 of epoch 1;
    both come back, resume after that step, and end as if never interrupted."""
    args, expected = two_epochs
    out = tmp_path / "out"
    submit = Background(two_jobs, *args, "--output-dir", str(out), "--cpus-per-job", "1", "--time", "30",
                        "--signal-before", "60", "--wait", "--poll-seconds", "1", env={PAUSE_ENV: "1:1"})
    job = submit.job_id()
    logs = [out / "logs" / "slurm" / f"{job}_{i}_0_log.out" for i in (0, 1)]
    for log in logs:
        wait_for_line(log, "ptuning-test: paused at epoch 1 step 1")
    assert "#SBATCH --signal=USR2@60" in (out / "logs" / "slurm" / f"{job}_submission.sh").read_text()
    subprocess.run(["scontrol", "requeue", f"{job}_0"], check=True)
    subprocess.run(["scancel", "--signal=USR2", f"{job}_1"], check=True)
    submit.finish(timeout=240)
    assert submit.proc.returncode == 0, "\n".join(submit.out + submit.err)
    for seed, log in zip((0, 1), logs):
        result = json.loads((out / "lora_8" / f"seed{seed}" / "result.json").read_text())
        assert result["resumed_from"] == {"epochs_done": 0, "step": 1}
        assert metrics(out, "lora_8", seed) == expected[seed]
        text = log.read_text()
        assert "restart 1:" in text and "resuming from" in text and "at epoch 1, after step 1 of 2" in text
    assert "time limit near: stopping the run to requeue it" in logs[1].read_text()
    assert "--force" not in logs[0].read_text()
    assert sacct_states(job) == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}


def test_a_task_killed_with_sigkill_is_reported_failed_without_hanging(two_jobs, two_epochs, tmp_path):
    args, _ = two_epochs
    out = tmp_path / "out"
    submit = Background(two_jobs, *args[:1], *args[3:], "--output-dir", str(out), "--cpus-per-job", "1",
                        "--wait", "--poll-seconds", "1", env={PAUSE_ENV: "1:1"})
    job = submit.job_id()
    log = out / "logs" / "slurm" / f"{job}_0_log.out"
    wait_for_line(log, "ptuning-test: paused at epoch 1 step 1")
    pids = subprocess.run(["scontrol", "listpids", job], capture_output=True, text=True, check=True).stdout.split()[5::5]
    runs = [pid for pid in pids if " run " in Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")]
    assert len(runs) == 1, pids
    os.kill(int(runs[0]), 9)  # what the out-of-memory killer does
    took = submit.finish(timeout=120)
    assert submit.proc.returncode == 1
    assert took < 30  # reported from sacct within seconds, not after a timeout
    assert submit.err == [
        f"ptuning: error: [lora_8 seed 0] the task failed: the run was killed by SIGKILL (out of memory, or killed by hand); "
        f"log: {log}",
        "ptuning: 1 of 1 runs failed: lora_8 seed 0",
    ]
    assert "ptuning: 0 of 1 runs done, 0 running, 0 waiting, 1 failed" in submit.out
    assert sacct_states(job) == {job: "FAILED"}


def test_the_local_executor_gives_the_same_results_as_the_array(array, two_jobs, tiny_model_dir, tiny_data_dir, tmp_path):
    """One run of the array again, locally (tests/cluster/test_submit.py runs more of them locally against run-all)."""
    assert array["done"].returncode == 0
    out = tmp_path / "local"
    done = ptuning(two_jobs, "submit", "full_ft", "--seed", "1", "--executor", "local", *run_args(tiny_model_dir, tiny_data_dir),
                   "--output-dir", str(out))
    assert done.returncode == 0, done.stderr
    assert metrics(out, "full_ft", 1) == metrics(array["out"], "full_ft", 1)


def test_an_unknown_partition_is_one_line(two_jobs, tmp_path):
    done = ptuning(two_jobs, "submit", "lora_8", "--partition", "no-such", "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 1
    partitions = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True).stdout.split()
    assert done.stderr == (f"ptuning: error: --partition no-such: no such partition on this cluster; the partitions are: "
                           f"{', '.join(dict.fromkeys(partitions))}\n")
    assert not (tmp_path / "out").exists()


def test_a_sweep_runs_each_point_as_a_task_of_the_array_and_equals_a_plain_run(tiny_model_dir, tiny_data_dir, tmp_path):
    """A job with a 2×2 grid (`sweep:`): four points, one task each, every result equal to a plain `ptuning run`'s."""
    import shutil

    from tests.conftest import JOBS

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    shutil.copy(JOBS / "_defaults.yaml", jobs)
    (jobs / "lora_8.yaml").write_text((JOBS / "lora_8.yaml").read_text() + "sweep: {lr: [1.0e-3, 1.0e-2], rank: [1, 2]}\n")
    args = ["lora_8", *run_args(tiny_model_dir, tiny_data_dir), "--cpus-per-job", "1"]
    out, ref = tmp_path / "out", tmp_path / "ref"
    done = ptuning(jobs, "submit", *args, "--output-dir", str(out), "--wait", "--poll-seconds", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.match(r"ptuning: submitted 4 runs as SLURM job array (\d+) \(4 tasks on partition \w+\)", done.stdout)
    assert found, done.stdout
    job = found.group(1)
    assert sacct_states(job) == {f"{job}_{i}": "COMPLETED" for i in range(4)}
    tasks = (out / "logs" / "slurm" / f"{job}_runs.tsv").read_text()
    points = sorted(p.name for p in (out / "lora_8").iterdir())
    assert points == ["lr=0.01,rank=1", "lr=0.01,rank=2", "lr=1e-3,rank=1", "lr=1e-3,rank=2"]
    assert all(f"lora_8/{point}" in tasks for point in points)  # which task ran which point

    plain = ptuning(jobs, "run", "lora_8", *run_args(tiny_model_dir, tiny_data_dir), "--output-dir", str(ref))
    assert plain.returncode == 0, plain.stderr
    for point in points:
        lr, rank = (value.split("=")[1] for value in point.split(","))
        mine, theirs = (json.loads((folder / "lora_8" / point / "seed0" / "result.json").read_text()) for folder in (out, ref))
        assert mine["config"]["lr"] == float(lr) and mine["config"]["method"]["rank"] == int(rank), point
        assert [(e["train_loss"], e["accuracy"]) for e in mine["epochs"]] == [(e["train_loss"], e["accuracy"]) for e in theirs["epochs"]]
    again = ptuning(jobs, "submit", *args, "--output-dir", str(out))
    assert again.returncode == 0 and again.stdout.startswith(f"ptuning: all 4 runs are already completed in {out}; nothing to submit")

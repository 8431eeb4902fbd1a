"""Runs that survive interruption, bad input and numeric trouble, and lose nothing (tiny model, CPU).

Every run here is 16 training reviews in batches of 8 (2 steps an epoch), 8 test reviews, 2 epochs.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ptuning.atomic import atomic_save
from ptuning.cli import main
from ptuning.errors import PtuningError
from ptuning.report.results import schema_problem
from ptuning.run import checkpoint
from ptuning.run.interrupt import PAUSE_ENV
from ptuning.run.lock import LOCK_FILE, RunLock
from tests.conftest import JOBS, REPO

TINY = {"batch_size": "8", "eval_batch_size": "8", "epochs": "2", "max_length": "32", "train_limit": "16", "eval_limit": "8"}
JOB_A = "title: A\nrow: 1\nmethod: {name: lora, implementation: hand, rank: 2}\nlr: 1.0e-3\n"


def write_jobs(directory: Path, model: Path, data: Path, jobs: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in (JOBS / "_defaults.yaml").read_text().splitlines():
        key = line.split(":", 1)[0]
        value = {"model": str(model), "dataset": str(data), **TINY}.get(key)
        lines.append(f"{key}: {value}" if value is not None else line)
    (directory / "_defaults.yaml").write_text("\n".join(lines) + "\n")
    for name, text in jobs.items():
        (directory / f"{name}.yaml").write_text(text)
    return directory


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory, tiny_model_dir, tiny_data_dir) -> Path:
    return write_jobs(tmp_path_factory.mktemp("jobs"), tiny_model_dir, tiny_data_dir, {"a": JOB_A})


def cli(jobs_dir: Path, *args: str):
    return CliRunner().invoke(main, ["--jobs-dir", str(jobs_dir), *args], env={"HF_HUB_OFFLINE": "1"}, catch_exceptions=False)


def run_a(jobs_dir: Path, out: Path, *extra: str):
    return cli(jobs_dir, "run", "a", "--device", "cpu", "--output-dir", str(out), *extra)


def metrics(out: Path, job: str = "a") -> list[tuple[float, float]]:
    data = json.loads((out / job / "seed0" / "result.json").read_text())
    assert data["status"] == "completed"
    return [(e["train_loss"], e["accuracy"]) for e in data["epochs"]]


def files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture(scope="module")
def reference(jobs_dir, tmp_path_factory) -> list[tuple[float, float]]:
    """The uninterrupted run's per-epoch (loss, accuracy)."""
    out = tmp_path_factory.mktemp("reference")
    result = run_a(jobs_dir, out)
    assert result.exit_code == 0, result.output
    assert files(out) == ["a/seed0/lora/lora.safetensors", "a/seed0/lora/ptuning_artifact.json", "a/seed0/metrics.jsonl", "a/seed0/result.json"]  # checkpoint removed, lock released
    return metrics(out)


def spawn_paused(jobs_dir: Path, out: Path, pause: str) -> tuple[subprocess.Popen, list[str]]:
    """`ptuning run a` in a subprocess that waits (PTUNING_TEST_PAUSE) after the given training step."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", PAUSE_ENV: pause}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ptuning.cli", "--jobs-dir", str(jobs_dir), "run", "a", "--device", "cpu", "--output-dir", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    lines = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("ptuning-test: paused"):
            return proc, lines
    proc.kill()
    pytest.fail("the run never paused:\n" + "".join(lines) + proc.stdout.read())


def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_result(jobs_dir, reference, tmp_path):
    out = tmp_path / "out"
    proc, _ = spawn_paused(jobs_dir, out, "2:1")  # killed in the middle of epoch 2
    assert checkpoint.load(out / "a/seed0/checkpoint.pt")["step"] == 0  # epoch 1's checkpoint
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert (out / "a/seed0" / LOCK_FILE).exists()  # left behind by the killed run; flock makes it harmless

    result = run_a(jobs_dir, out)
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.output and "the end of epoch 1" in result.output
    assert metrics(out) == reference
    assert json.loads((out / "a/seed0/result.json").read_text())["resumed_from"] == {"epochs_done": 1, "step": 0}
    assert files(out) == ["a/seed0/lora/lora.safetensors", "a/seed0/lora/ptuning_artifact.json", "a/seed0/metrics.jsonl", "a/seed0/result.json"]


def test_sigterm_checkpoints_mid_epoch_says_how_to_resume_and_the_lock_stops_a_second_run(jobs_dir, reference, tmp_path):
    out = tmp_path / "out"
    proc, _ = spawn_paused(jobs_dir, out, "1:1")  # after the first of two steps of epoch 1

    second = run_a(jobs_dir, out)  # same output directory while the first run holds it
    assert second.exit_code == 1
    err = second.stderr.strip().splitlines()
    assert len(err) == 1 and f"is in use by another ptuning run (pid {proc.pid})" in err[0]
    for extra in ((), ("--concurrency", "2")):  # a second run-all refuses that run too, serial or concurrent (in its child)
        other = cli(jobs_dir, "run-all", "--device", "cpu", "--output-dir", str(out), *extra)
        assert other.exit_code == 1 and f"run directory {out / 'a' / 'seed0'} is in use by another ptuning run (pid {proc.pid})" in other.output

    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("ptuning: interrupted by SIGTERM: a stopped in epoch 1/2 after step 1 of 2")
    assert f"to resume, run: python -m ptuning.cli --jobs-dir {jobs_dir} run a --device cpu --output-dir {out}" in last
    state = checkpoint.load(out / "a/seed0/checkpoint.pt")
    assert (state["step"], state["epochs"]) == (1, [])
    assert set(state["trainable"]) == {n for n in state["trainable"] if "lora_" in n}  # only the trainable parameters
    assert not (out / "a/seed0/result.json").exists()

    result = run_a(jobs_dir, out)
    assert result.exit_code == 0, result.output
    assert "epoch 1, after step 1 of 2" in result.output
    assert metrics(out) == reference


def test_sigint_then_skip_resume_refuse_and_force(jobs_dir, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def interrupt_at_2_1(epoch, step, stop):  # stands in for Ctrl-C during epoch 2, step 1
        if (epoch, step) == (2, 1):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr("ptuning.run.runner.pause_hook", interrupt_at_2_1)
    result = run_a(jobs_dir, out)
    assert result.exit_code == 130
    assert "interrupted by SIGINT: a stopped in epoch 2/2 after step 1 of 2" in result.stderr and "to resume, run:" in result.stderr
    monkeypatch.undo()

    refused = run_a(jobs_dir, out, "--epochs", "3")
    assert refused.exit_code == 1
    assert "checkpoint.pt was written for a different configuration (epochs: 2 → 3); rerun with --force" in refused.stderr

    resumed = run_a(jobs_dir, out)
    assert resumed.exit_code == 0 and "epoch 2, after step 1 of 2" in resumed.output
    assert metrics(out) == reference

    skipped = run_a(jobs_dir, out)
    assert skipped.exit_code == 0 and "already completed with this configuration" in skipped.output and "--force" in skipped.output
    refused = run_a(jobs_dir, out, "--epochs", "3")
    assert refused.exit_code == 1 and "holds a completed run with a different configuration (epochs: 2 → 3)" in refused.stderr

    forced = run_a(jobs_dir, out, "--force")
    assert forced.exit_code == 0 and "skipping" not in forced.output and "resuming" not in forced.output
    assert metrics(out) == reference


def test_nan_loss_marks_the_job_failed_and_run_all_goes_on(tmp_path, tiny_model_dir, tiny_data_dir):
    jobs = write_jobs(tmp_path / "jobs", tiny_model_dir, tiny_data_dir, {
        "exploding": "title: Exploding\nrow: 1\nmethod: {name: full, implementation: hand}\nlr: 1.0e+30\n",
        "after": JOB_A.replace("row: 1", "row: 2"),
    })
    out = tmp_path / "out"
    result = cli(jobs, "run-all", "--device", "cpu", "--output-dir", str(out))
    assert result.exit_code == 1
    assert "ptuning: error: [exploding] loss is nan at step" in result.stderr and "of exploding epoch" in result.stderr
    assert "ptuning: 1 of 2 runs failed: exploding" in result.stderr
    failed = json.loads((out / "exploding/seed0/result.json").read_text())
    assert failed["status"] == "failed" and "loss is nan at step" in failed["reason"]
    assert schema_problem(failed) is None
    assert len(metrics(out, "after")) == 2  # the next job ran
    row = next(line for line in result.output.splitlines() if line.startswith("  1  Exploding "))
    assert row.split() == ["1", "Exploding", "–", "failed", "–"]  # the compact table: no number, and the reason under it
    assert "failed: exploding seed 0: loss is nan at step" in result.output
    assert "1 failed (exploding)" in result.output  # the summary names it
    row = next(line for line in (out / "TABLES.md").read_text().splitlines() if "| exploding " in line)
    assert "failed: loss is nan" in row


def enospc(*_, **__):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_checkpointing_is_one_line_and_leaves_no_file(jobs_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(os, "fsync", enospc)
    result = run_a(jobs_dir, out)
    assert result.exit_code == 1
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "checkpoint.pt: No space left on device; free some space and rerun" in err[0]
    assert files(out) == ["a/seed0/metrics.jsonl"]  # no checkpoint, no temporary, no lock; the log of what ran
    assert [json.loads(line)["event"] for line in (out / "a/seed0/metrics.jsonl").read_text().splitlines()] == ["start", "step", "epoch"]


def test_full_disk_while_writing_the_result_loses_nothing(jobs_dir, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_fsync = os.fsync

    def fsync(fd):
        if "result.json" in os.readlink(f"/proc/self/fd/{fd}"):
            enospc()
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = run_a(jobs_dir, out)
    assert result.exit_code == 1 and "result.json: No space left on device" in result.stderr
    assert "a/seed0/checkpoint.pt" in files(out) and "a/seed0/result.json" not in files(out)
    assert not [f for f in files(out) if ".tmp" in f]
    monkeypatch.undo()

    # a checkpoint edited by hand: one line each, and the file left as it was
    ckpt = out / "a" / "seed0" / "checkpoint.pt"
    good = ckpt.read_bytes()
    for edit, message in ((lambda p: p.pop("trainable"), "unreadable checkpoint ('trainable' is missing or of the wrong type)"),
                          (lambda p: p.update(step=1.5), "unreadable checkpoint ('step' is missing or of the wrong type)"),
                          (lambda p: p["optimizer"].update(param_groups=[]), "the checkpoint does not fit this run (ValueError: ")):
        ckpt.write_bytes(good)
        payload = torch.load(ckpt, weights_only=True)
        edit(payload)
        torch.save(payload, ckpt)
        edited = ckpt.read_bytes()
        result = run_a(jobs_dir, out)
        assert result.exit_code == 1 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert "rerun with --force to start over" in result.stderr and ckpt.read_bytes() == edited
    ckpt.write_bytes(good)

    result = run_a(jobs_dir, out)  # space freed: the last epoch's checkpoint finishes the job
    assert result.exit_code == 0 and "the end of epoch 2" in result.output
    assert metrics(out) == reference


def knob_job(tmp_path: Path, jobs_dir: Path, method: str) -> Path:
    (tmp_path / "_defaults.yaml").write_text((jobs_dir / "_defaults.yaml").read_text())
    path = tmp_path / "bad.yaml"
    path.write_text(f"title: Bad\nrow: 1\nmethod: {method}\nlr: 1.0e-3\n")
    return path


@pytest.mark.parametrize(
    "method, extra, message",
    [
        ("{name: lora, implementation: hand, rank: 0}", [], "'method.rank' must be at least 1, got 0"),
        ("{name: lora, implementation: hand, rank: 8, alpha: 0}", [], "knob 'alpha' must be > 0"),
        ("{name: lora, implementation: peft, rank: 1, dropout: 1.5}", [], "knob 'dropout' must be < 1"),
        ("{name: adapter, implementation: hand, bottleneck: -1}", [], "'method.bottleneck' must be at least 1"),
        ("{name: soft_prompt, implementation: hand, tokens: 0}", [], "'method.tokens' must be at least 1"),
        ("{name: lora, implementation: hand, rank: 2}", ["--seed", str(2**40)], "'seed' must be at most 4294967295"),
        ("{name: lora, implementation: hand, rank: 2}", ["--train-limit", "0"], "'train_limit' must be at least 1"),
    ],
)
def test_out_of_range_values_are_one_line_and_write_nothing(jobs_dir, tmp_path, method, extra, message):
    path = knob_job(tmp_path, jobs_dir, method)
    out = tmp_path / "out"
    result = cli(jobs_dir, "run", str(path), "--device", "cpu", "--output-dir", str(out), *extra)
    assert result.exit_code == 1
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ptuning: error:") and message in err[0], err
    assert not out.exists()


def test_read_only_output_directory_is_one_line_and_writes_nothing(jobs_dir, tmp_path, monkeypatch):
    out = tmp_path / "readonly"
    out.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: simulate the refusal the kernel would give
        real_open = os.open

        def deny(path, *args, **kwargs):
            if str(path).startswith(str(out)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", deny)
    else:
        out.chmod(0o555)
    expected = f"cannot write to output directory {out}: Permission denied"  # the output folder's write probe
    try:
        result = run_a(jobs_dir, out)
    finally:
        out.chmod(0o755)
    assert result.exit_code == 1
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert files(out) == [] and list(out.iterdir()) == []


def test_a_file_where_the_job_directory_goes_is_one_line_and_kept(jobs_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("not a directory")  # where a/seed0/ would go
    result = run_a(jobs_dir, out)
    assert result.exit_code == 1
    err = result.stderr.strip().splitlines()
    # refused before anything trains: the run's folder cannot be made
    assert err == [f"ptuning: error: [a] cannot write to run directory {out / 'a' / 'seed0'}: Not a directory; "
                   "pass --output-dir with a writable directory"]
    assert files(out) == ["a"] and (out / "a").read_text() == "not a directory"


def test_run_lock_refuses_a_holder_and_ignores_a_stale_file(tmp_path):
    run = tmp_path / "out" / "job" / "seed0"
    with RunLock(run):
        assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(PtuningError, match=rf"run directory {run} is in use by another ptuning run \(pid {os.getpid()}\): the same job and seed"):
            RunLock(run).acquire()
        with RunLock(tmp_path / "out" / "job" / "seed1"), RunLock(tmp_path / "out" / "other" / "seed0"):
            pass  # other runs in the same output folder go on together
    assert not (tmp_path / "out").exists()  # every folder the locks created, empty again: removed
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / LOCK_FILE).write_text("999999\n")  # a killed run's file, nobody holds the flock
    with RunLock(tmp_path / "stale"):
        pass
    assert (tmp_path / "stale").is_dir()  # not created by the lock: kept


def test_run_lock_uses_a_folder_another_run_made_at_the_same_moment(tmp_path, monkeypatch):
    """Two runs of one grid (`run-all --concurrency`) both find `out/lora` missing; the second one's mkdir fails."""
    shared, run = tmp_path / "out" / "lora", tmp_path / "out" / "lora" / "rank=2" / "seed0"
    mkdir = Path.mkdir

    def raced(self, *args, **kwargs):
        if self == shared:
            mkdir(self)  # the other run got there first
            raise FileExistsError(17, "File exists", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", raced)
    with RunLock(run) as lock:
        assert lock.created == [tmp_path / "out", shared / "rank=2", run]  # the other run's folder is not ours to remove
    assert shared.is_dir() and not (shared / "rank=2").exists()


def test_run_lock_makes_again_a_folder_another_run_removed_at_the_same_moment(tmp_path, monkeypatch):
    """A run that found `out/lora` there loses it to the other run's clean-up before making its own folder in it."""
    shared, run = tmp_path / "out" / "lora", tmp_path / "out" / "lora" / "rank=1" / "seed0"
    shared.mkdir(parents=True)
    mkdir, removed = Path.mkdir, []

    def raced(self, *args, **kwargs):
        if self.parent == shared and not removed:
            shared.rmdir()  # the other run's clean-up
            removed.append(shared)
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", raced)
    with RunLock(run) as lock:
        assert removed and (run / LOCK_FILE).is_file() and lock.created == [shared, shared / "rank=1", run]
    assert not shared.exists() and (tmp_path / "out").is_dir()  # what it made again is its own to remove


def test_run_lock_gives_up_in_one_line_when_its_folder_keeps_vanishing(tmp_path, monkeypatch):
    shared, run = tmp_path / "out" / "lora", tmp_path / "out" / "lora" / "rank=1" / "seed0"
    shared.mkdir(parents=True)
    mkdir, tries = Path.mkdir, []

    def vanishing(self, *args, **kwargs):
        if self.parent == shared:
            tries.append(self)
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", vanishing)
    with pytest.raises(PtuningError) as info:
        RunLock(run).acquire()
    assert str(info.value) == (f"cannot write to run directory {run}: No such file or directory; pass --output-dir with a "
                               "writable directory")
    assert len(tries) == 20 and files(tmp_path) == [] and sorted(p.name for p in shared.iterdir()) == []


def _lock_and_release(root: str, name: str, times: int) -> None:
    for _ in range(times):
        with RunLock(Path(root) / "out" / "lora" / name / "seed0", Path(root) / "out"):
            pass


def test_run_locks_of_sibling_runs_in_many_processes_never_collide(tmp_path):
    """The real race: processes locking sibling run directories under a shared folder each makes and removes."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        pool.starmap(_lock_and_release, [(str(tmp_path), f"rank={i}", 1000) for i in range(4)])
    assert files(tmp_path) == []  # no lock file left behind (a folder another run still used may stay)


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("KEEP\n")
    run = tmp_path / "o" / "lora_8" / "seed0"
    run.mkdir(parents=True)
    (run / LOCK_FILE).symlink_to(victim)
    with pytest.raises(PtuningError, match=rf"{run / LOCK_FILE} is a symbolic link; ptuning does not follow it"):
        RunLock(run).acquire()
    assert victim.read_text() == "KEEP\n"


def test_atomic_save_replaces_a_directory_whole_or_not_at_all(tmp_path):
    target = tmp_path / "adapter"

    def good(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "weights.bin").write_bytes(b"new")

    def broken(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "weights.bin").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target.mkdir()
    (target / "weights.bin").write_bytes(b"old")
    with pytest.raises(PtuningError, match="No space left on device"):
        atomic_save(target, broken)
    assert (target / "weights.bin").read_bytes() == b"old" and files(tmp_path) == ["adapter/weights.bin"]
    atomic_save(target, good)
    assert (target / "weights.bin").read_bytes() == b"new" and files(tmp_path) == ["adapter/weights.bin"]
    atomic_save(tmp_path / "x.pt", lambda tmp: torch.save({"a": 1}, tmp))
    assert torch.load(tmp_path / "x.pt") == {"a": 1}


def test_fast_path_and_heldout_protocol_resume_exactly(jobs_dir, tmp_path, monkeypatch):
    """Stop mid-epoch on the fast path under the held-out protocol; resuming gives the uninterrupted result."""
    extra = ("--speed", "fast", "--protocol", "heldout", "--heldout-size", "4")

    def curve(out):
        data = json.loads((out / "a" / "heldout-seed0" / "result.json").read_text())
        assert data["status"] == "completed" and data["speed"]["fast"] is True and schema_problem(data) is None
        return [(e["train_loss"], e["accuracy"], e["val_accuracy"]) for e in data["epochs"]]

    whole = tmp_path / "whole"
    assert run_a(jobs_dir, whole, *extra).exit_code == 0
    out = tmp_path / "out"

    def interrupt_at_2_1(epoch, step, stop):
        if (epoch, step) == (2, 1):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr("ptuning.run.runner.pause_hook", interrupt_at_2_1)
    stopped = run_a(jobs_dir, out, *extra)
    assert stopped.exit_code == 130 and "after step 1 of" in stopped.stderr
    assert checkpoint.load(out / "a" / "heldout-seed0" / "checkpoint.pt")["step"] == 1
    monkeypatch.undo()
    resumed = run_a(jobs_dir, out, *extra)
    assert resumed.exit_code == 0 and "resuming from" in resumed.output
    assert curve(out) == curve(whole)


def test_zero_shot_rerun_is_skipped(tmp_path, tiny_model_dir, tiny_data_dir):
    jobs = write_jobs(tmp_path / "jobs", tiny_model_dir, tiny_data_dir,
                      {"zs": "title: Zero\nrow: 0\nmethod: {name: zero_shot, implementation: hand}\n"})
    out = tmp_path / "out"
    first = cli(jobs, "run", "zs", "--device", "cpu", "--output-dir", str(out))
    assert first.exit_code == 0, first.output
    again = cli(jobs, "run", "zs", "--device", "cpu", "--output-dir", str(out))
    assert again.exit_code == 0 and "already completed with this configuration" in again.output
    assert files(out) == ["zs/seed0/metrics.jsonl", "zs/seed0/result.json"]


def test_time_outside_train_and_eval_is_recorded(jobs_dir, tmp_path, monkeypatch):
    """`setup_seconds` (before the first step) and `save_seconds` (checkpoints and parameters) in the result: with the
    loading and every write slowed by a known delay, both are at least that delay, and setup is not in wall_seconds."""
    import ptuning.run.runner as runner

    load, save, artifact = runner.load_model, checkpoint.save, runner.atomic_save

    def slow(fn, delay):
        def wrapped(*args, **kwargs):
            time.sleep(delay)
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(runner, "load_model", slow(load, 1.5))
    monkeypatch.setattr(checkpoint, "save", slow(save, 0.2))
    monkeypatch.setattr(runner, "atomic_save", slow(artifact, 0.2))
    out = tmp_path / "out"
    assert run_a(jobs_dir, out).exit_code == 0
    data = json.loads((out / "a" / "seed0" / "result.json").read_text())
    assert data["setup_seconds"] >= 1.5
    assert data["save_seconds"] >= 3 * 0.2  # 2 epochs' checkpoints + the trained parameters
    work = data["train_seconds"] + data["eval_seconds"]
    assert work + data["save_seconds"] <= data["wall_seconds"] < work + data["save_seconds"] + 1.5  # setup is outside it


def test_write_errors_say_what_to_do_for_the_command_at_hand(tmp_path):
    from ptuning.atomic import write_error

    full, denied = OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EACCES, "Permission denied")
    assert str(write_error(Path("r.json"), full)) == (
        "cannot write r.json: No space left on device; free some space and rerun the same command (it resumes from the last checkpoint)")
    assert str(write_error(Path("r.json"), denied)) == "cannot write r.json: Permission denied; pass --output-dir with a writable directory"
    bench = "pass --output with a writable path"
    assert str(write_error(Path("b.md"), full, bench)) == "cannot write b.md: No space left on device; free some space and rerun the same command"

    def refuse(tmp):
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PtuningError) as info:
        atomic_save(tmp_path / "b.md", refuse, writable=bench)
    assert str(info.value) == f"cannot write {tmp_path / 'b.md'}: Permission denied; {bench}" and not list(tmp_path.iterdir())

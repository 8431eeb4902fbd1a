"""A full disk and a read-only folder, for real: a 2 MB tmpfs filled to the last byte, and a read-only bind mount.

Each is one line (no traceback), the previous checkpoint stays intact, and the same command resumes once the disk has
room again. Mounting needs root (and a kernel that allows it): elsewhere these tests skip, saying why, except where
PTUNING_REQUIRE_MOUNTS=1 (the CI entry point, .ci/run, sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from ptuning import data as data_mod
from ptuning.run import checkpoint
from tests.run.test_reliability import JOB_A, cli, files, metrics, run_a, spawn_paused, write_jobs

REQUIRED = os.environ.get("PTUNING_REQUIRE_MOUNTS") == "1"


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"PTUNING_REQUIRE_MOUNTS=1 but {reason}")
    pytest.skip(reason)


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(done.stderr.strip() or f"{' '.join(command)} exited {done.returncode}")


@contextlib.contextmanager
def mounted(target: Path, *how: str):
    """`mount *how target`, unmounted again whatever happens; skips (or fails, see above) when mounting is not allowed."""
    if os.geteuid() != 0:
        _unavailable("mounting a tmpfs or a read-only bind mount needs root")
    target.mkdir(parents=True, exist_ok=True)
    try:
        _run("mount", *how, str(target))
    except OSError as exc:
        _unavailable(f"this machine does not allow mounting ({exc})")
    try:
        yield target
    finally:
        try:
            _run("umount", str(target))
        except OSError:
            _run("umount", "-l", str(target))


@contextlib.contextmanager
def tmpfs(target: Path, size: str = "2m"):
    with mounted(target, "-t", "tmpfs", "-o", f"size={size}", "tmpfs"):
        yield target


@contextlib.contextmanager
def read_only(target: Path):
    """`target` read-only in place (a bind mount of itself, remounted read-only)."""
    with mounted(target, "--bind", str(target)):
        _run("mount", "-o", "remount,ro,bind", str(target))
        yield target


def fill(directory: Path) -> Path:
    """A file that takes every free byte of `directory`'s filesystem."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    try:  # what is left is less than one more block
        with open(filler, "ab", buffering=0) as f:
            while True:
                f.write(b"\0" * 512)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    return filler


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory, tiny_model_dir, tiny_data_dir) -> Path:
    return write_jobs(tmp_path_factory.mktemp("jobs"), tiny_model_dir, tiny_data_dir,
                      {"a": JOB_A, "b": JOB_A.replace("row: 1", "row: 2")})


@pytest.fixture(scope="module")
def reference(jobs_dir, tmp_path_factory) -> list[tuple[float, float]]:
    out = tmp_path_factory.mktemp("reference")
    assert run_a(jobs_dir, out).exit_code == 0
    return metrics(out)


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and "Error:" not in text.replace("ptuning: error:", ""), text


def stop_when_the_disk_cannot_take_the_checkpoint(jobs_dir, out: Path, make_unwritable) -> list[str]:
    """Run `a` until it pauses in epoch 2 (epoch 1's checkpoint written), make the disk unwritable, send SIGTERM: the
    checkpoint at the stop cannot be written. Returns the run's stderr lines."""
    proc, _ = spawn_paused(jobs_dir, out, "2:1")
    ckpt = out / "a" / "seed0" / checkpoint.CHECKPOINT_FILE
    before = ckpt.read_bytes()
    with make_unwritable():
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    no_traceback(stdout + stderr)
    assert proc.returncode == 1, stderr
    assert ckpt.read_bytes() == before  # the epoch-1 checkpoint, intact
    assert checkpoint.load(ckpt)["step"] == 0 and len(checkpoint.load(ckpt)["epochs"]) == 1
    return stderr.strip().splitlines()


def test_a_full_disk_at_the_checkpoint_is_one_line_and_the_run_resumes_once_there_is_room(jobs_dir, reference, tmp_path):
    out = tmp_path / "disk"
    with tmpfs(out):
        fillers = []

        @contextlib.contextmanager
        def full():
            fillers.append(fill(out))
            yield

        err = stop_when_the_disk_cannot_take_the_checkpoint(jobs_dir, out, full)
        assert err[-1] == (f"ptuning: error: [a] cannot write {out / 'a' / 'seed0' / 'checkpoint.pt'}: No space left on device; "
                           "free some space and rerun the same command (it resumes from the last checkpoint)")
        assert [f for f in files(out) if ".tmp" in f] == []
        fillers[0].unlink()
        resumed = run_a(jobs_dir, out)
        assert resumed.exit_code == 0 and "the end of epoch 1" in resumed.output
        assert metrics(out) == reference


def test_run_all_on_a_full_disk_is_one_line_per_job_and_leaves_nothing(jobs_dir, tmp_path):
    out = tmp_path / "disk"
    with tmpfs(out):
        fill(out)
        result = cli(jobs_dir, "run-all", "--device", "cpu", "--output-dir", str(out))
        no_traceback(result.output)
        assert result.exit_code == 1
        errors = [line for line in result.stderr.splitlines() if line.startswith("ptuning: error:")]
        for line, job in zip(errors, ("a", "b"), strict=True):  # each job tried, and refused in one line
            assert line == (f"ptuning: error: [{job}] cannot write to run directory {out / job / 'seed0'}: No space left on "
                            "device; free some space and rerun the same command")
        assert result.stderr.splitlines()[-1] == "ptuning: 2 of 2 runs failed: a, b"
        assert files(out) == ["filler"] and sorted(p.name for p in out.iterdir()) == ["filler"]  # no lock, no folder


def test_a_full_cache_disk_does_not_stop_the_run(jobs_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setattr(data_mod, "_MEMO", {})  # tokenize again, and try to cache it
    with tmpfs(cache):
        fill(cache)
        monkeypatch.setenv("PTUNING_CACHE", str(cache))
        result = run_a(jobs_dir, tmp_path / "out")
        no_traceback(result.output)
        assert result.exit_code == 0, result.output
        assert files(cache) == ["filler"] and list((cache / "tokenized").iterdir()) == []  # nothing cached, nothing left
    assert len(metrics(tmp_path / "out")) == 2


def test_a_run_folder_made_read_only_mid_run_is_one_line_and_resumes_once_writable(jobs_dir, reference, tmp_path):
    out = tmp_path / "out"
    rdir = out / "a" / "seed0"
    err = stop_when_the_disk_cannot_take_the_checkpoint(jobs_dir, out, lambda: read_only(rdir))
    assert err[-1] == (f"ptuning: error: [a] cannot write {rdir / 'checkpoint.pt'}: Read-only file system; "
                       "pass --output-dir with a writable directory")
    assert [f for f in files(out) if ".tmp" in f] == []
    resumed = run_a(jobs_dir, out)
    assert resumed.exit_code == 0 and "the end of epoch 1" in resumed.output
    assert metrics(out) == reference


def test_a_read_only_output_folder_is_one_line_and_keeps_what_is_there(jobs_dir, tmp_path):
    out = tmp_path / "out"
    (out / "a" / "seed0").mkdir(parents=True)
    (out / "a" / "seed0" / "result.json").write_text(json.dumps({"job": "a"}))
    with read_only(out):
        result = run_a(jobs_dir, out, "--force")
        no_traceback(result.output)
        assert result.exit_code == 1
        assert result.stderr.strip() == (f"ptuning: error: [a] cannot write to output directory {out}: Read-only file system; "
                                         "pass --output-dir with a writable directory")
    assert files(out) == ["a/seed0/result.json"]


def test_a_full_disk_stops_the_metrics_log_with_one_warning_and_the_run_goes_on(tmp_path, capsys):
    from ptuning.run.metrics import MetricsLog

    with tmpfs(tmp_path / "disk") as disk:
        log = MetricsLog(disk)
        log.event("start")
        fill(disk)
        log.event("step", loss=1.0, note="x" * 8192)  # more than the page the first line took: the disk is full
        log.event("step", loss=0.5)
        log.close()
        lines = (disk / "metrics.jsonl").read_text().splitlines()
    assert '"event": "start"' in lines[0] and not any('"loss": 0.5' in line for line in lines)  # nothing after the failure
    assert capsys.readouterr().err == (f"ptuning: warning: cannot write {disk / 'metrics.jsonl'} any more (No space left on "
                                       "device); the run goes on without it\n")

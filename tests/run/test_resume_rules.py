"""What a rerun does with what an earlier run left: an interrupted --force run continued by its printed command, the
leftovers of a killed run, a damaged result, a hand-edited checkpoint, another thread count; and options refused
before anything runs. Tiny model on CPU, in-process; interruptions stand in for Ctrl-C at a known step."""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path

import pytest
import torch

from tests.run.test_reliability import JOB_A, cli, files, metrics, run_a, write_jobs


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory, tiny_model_dir, tiny_data_dir) -> Path:
    return write_jobs(tmp_path_factory.mktemp("jobs"), tiny_model_dir, tiny_data_dir, {
        name: JOB_A.replace("row: 1", f"row: {row}").replace("title: A", f"title: {name.upper()}")
        for row, name in enumerate("abc", 1)})


@pytest.fixture(scope="module")
def reference(jobs_dir, tmp_path_factory) -> list[tuple[float, float]]:
    out = tmp_path_factory.mktemp("reference")
    assert run_a(jobs_dir, out).exit_code == 0
    return metrics(out)


def interrupt_at(monkeypatch, *points: tuple[int, int]) -> None:
    """SIGINT (as Ctrl-C would) after the training step at each (epoch, step) in turn, counting across jobs."""
    left = list(points)

    def hook(epoch, step, stop):
        if left and (epoch, step) == left[0]:
            left.pop(0)
            if not left:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr("ptuning.run.runner.pause_hook", hook)


def resume_args(stderr: str) -> list[str]:
    """The arguments of the command an interruption printed (after `python -m ptuning.cli` or `ptuning`)."""
    line = stderr.strip().splitlines()[-1]
    words = shlex.split(line.split("to resume, run: ", 1)[1])
    return words[words.index("--jobs-dir") + 2:] if "--jobs-dir" in words else words[1:]


def test_an_interrupted_force_run_is_continued_by_its_printed_command(jobs_dir, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = cli(jobs_dir, "run-all", "--epochs", "1", "--device", "cpu", "--output-dir", str(out))
    assert first.exit_code == 0, first.output  # a, b and c completed with another configuration (1 epoch)

    interrupt_at(monkeypatch, (1, 1), (1, 1))  # in b: a's first step is the first (1, 1)
    forced = cli(jobs_dir, "run-all", "--force", "--device", "cpu", "--output-dir", str(out))
    monkeypatch.undo()
    assert forced.exit_code == 130 and "b stopped in epoch 1/2 after step 1 of 2" in forced.stderr
    args = resume_args(forced.stderr)
    assert args[:-1] == ["run-all", "--force", "--device", "cpu", "--output-dir", str(out), "--force-id"] and len(args[-1]) == 8
    assert len(metrics(out, "a")) == 2 and len(metrics(out, "c")) == 1  # a done; c not started, its old result kept

    resumed = cli(jobs_dir, *args)
    assert resumed.exit_code == 0, resumed.output
    assert "[a] already completed with this configuration" in resumed.output  # not redone
    assert "[b] resuming from" in resumed.output and "epoch 1, after step 1 of 2" in resumed.output  # not restarted
    assert "[c] resuming" not in resumed.output and "[c] already" not in resumed.output  # still forced: rerun afresh
    assert metrics(out, "a") == metrics(out, "b") == metrics(out, "c") == reference

    assert cli(jobs_dir, "run-all", "--force-id", "abc", "--output-dir", str(out)).stderr.strip() == \
        "ptuning: error: --force-id goes with --force (it continues an interrupted --force run)"


def test_a_rerun_removes_what_a_killed_run_left_and_says_so(jobs_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    rdir = out / "a" / "seed0"
    monkeypatch.setattr("ptuning.run.runner.remove", lambda path: None)  # killed after the result, before the removal
    assert run_a(jobs_dir, out).exit_code == 0
    monkeypatch.undo()
    assert files(out) == ["a/seed0/checkpoint.pt", "a/seed0/lora/lora.safetensors", "a/seed0/lora/ptuning_artifact.json",
                          "a/seed0/metrics.jsonl", "a/seed0/result.json"]
    leftovers = [".checkpoint.pt.tmp-123-abcd1234", ".lora.tmp-77-x_9k2mqz", ".result.json.tmp-5-deadbeef"]
    (rdir / leftovers[0]).mkdir()
    (rdir / leftovers[0] / "checkpoint.pt").write_bytes(b"half a checkpoint")
    (rdir / leftovers[1]).mkdir()
    (rdir / leftovers[2]).write_text('{"job": ')  # a temporary of the older naming: a file beside the target

    again = run_a(jobs_dir, out)
    assert again.exit_code == 0, again.output
    assert f"[a] removed what an interrupted run left in {rdir}: {', '.join(leftovers)}" in again.output
    assert f"[a] removed {rdir / 'checkpoint.pt'}: the run it belongs to had completed ({rdir / 'result.json'})" in again.output
    assert "already completed with this configuration" in again.output
    assert sorted(p.name for p in rdir.iterdir()) == ["lora", "metrics.jsonl", "result.json"]


def test_a_damaged_result_is_named_rerun_and_its_parameters_kept_until_replaced(jobs_dir, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    rdir = out / "a" / "seed0"
    assert run_a(jobs_dir, out).exit_code == 0
    old_parameters = (rdir / "lora" / "lora.safetensors").read_bytes()
    (rdir / "result.json").write_bytes((rdir / "result.json").read_bytes()[:100])  # truncated

    interrupt_at(monkeypatch, (2, 1))
    stopped = run_a(jobs_dir, out)
    monkeypatch.undo()
    assert stopped.exit_code == 130
    assert f"[a] warning: {rdir / 'result.json'}: unreadable result file (" in stopped.output
    assert "it is not used, and is replaced when this run completes" in stopped.output
    assert (rdir / "lora" / "lora.safetensors").read_bytes() == old_parameters  # the last good parameters stay until new ones are written

    resumed = run_a(jobs_dir, out)
    assert resumed.exit_code == 0 and "the end of epoch" not in resumed.output and "epoch 2, after step 1" in resumed.output
    assert metrics(out) == reference


@pytest.fixture
def mid_epoch(jobs_dir, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(output folder, checkpoint) of `a` stopped after step 1 of epoch 2."""
    out = tmp_path / "out"
    interrupt_at(monkeypatch, (2, 1))
    assert run_a(jobs_dir, out).exit_code == 130
    monkeypatch.undo()
    return out, out / "a" / "seed0" / "checkpoint.pt"


@pytest.mark.parametrize("edit, problem", [
    (lambda p: p.update(epochs=[1]), "epoch 1's record is a int, not a mapping"),
    (lambda p: p["epochs"][0].pop("accuracy"), "epoch 1's 'accuracy' is missing or of the wrong type"),
    (lambda p: p["epochs"][0].update(epoch=2), "epoch 1's record says epoch 2"),
    (lambda p: p.update(loss_total=float("nan")), "'loss_total' is nan, not a finite number of at least 0"),
    (lambda p: p.update(step=-1), "'step' is -1, below 0"),
    (lambda p: p.update(epochs=p["epochs"] * 2), "it records 2 finished epochs and one in progress of 2"),
    (lambda p: p.update(step=3), "it is at step 3 of an epoch of 2 steps"),
])
def test_a_hand_edited_checkpoint_is_one_line_and_left_as_it_is(jobs_dir, mid_epoch, edit, problem):
    out, ckpt = mid_epoch
    payload = torch.load(ckpt, weights_only=True)
    edit(payload)
    torch.save(payload, ckpt)
    edited = ckpt.read_bytes()
    result = run_a(jobs_dir, out)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
    assert result.stderr == f"ptuning: error: [a] {ckpt}: unreadable checkpoint ({problem}); rerun with --force to start over\n"
    assert ckpt.read_bytes() == edited


def test_resuming_with_another_thread_count_warns(jobs_dir, mid_epoch, reference):
    out, ckpt = mid_epoch
    payload = torch.load(ckpt, weights_only=True)
    now = torch.get_num_threads()
    assert payload["threads"]["torch"] == now
    payload["threads"] = {"torch": now + 3, "omp_num_threads": str(now + 3)}
    torch.save(payload, ckpt)
    resumed = run_a(jobs_dir, out)
    assert resumed.exit_code == 0
    assert (f"[a] warning: this checkpoint was written with {now + 3} CPU threads, this process has {now}; the resumed run "
            f"may differ from an uninterrupted one in the last digits (set OMP_NUM_THREADS={now + 3} to match)") in resumed.output
    assert metrics(out) == reference  # here it does not (the tiny model's sums are too short to split)


def test_compile_on_cpu_is_refused_before_anything_runs(jobs_dir, tmp_path):
    for extra in ((), ("--concurrency", "2")):
        out = tmp_path / f"out{len(extra)}"
        command = "run-all" if extra else "run"
        result = cli(jobs_dir, command, *(() if extra else ("a",)), "--compile", "--device", "cpu", "--output-dir", str(out), *extra)
        assert result.exit_code == 1
        assert result.stderr == ("ptuning: error: a: compile: true (--compile) needs a CUDA device, and this run is on cpu; drop "
                                 "--compile (or pass --no-compile), or run on a GPU\n")
        assert not out.exists()

"""`run-all --concurrency K` end to end on the tiny assets: every run completes with several seeds, a Ctrl-C (or a
SIGTERM to the parent) lets every child checkpoint where it is, and the printed command resumes them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptuning.run import checkpoint
from ptuning.run.interrupt import PAUSE_ENV
from tests.conftest import REPO
from tests.run.test_reliability import JOB_A, cli, files, metrics, run_a, write_jobs


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory, tiny_model_dir, tiny_data_dir) -> Path:
    return write_jobs(tmp_path_factory.mktemp("jobs"), tiny_model_dir, tiny_data_dir,
                      {"a": JOB_A, "b": JOB_A.replace("row: 1", "row: 2").replace("title: A", "title: B")})


@pytest.fixture(scope="module")
def reference(jobs_dir, tmp_path_factory) -> list[tuple[float, float]]:
    out = tmp_path_factory.mktemp("reference")
    assert run_a(jobs_dir, out).exit_code == 0
    return metrics(out)


def test_run_all_with_concurrency_and_several_seeds_completes_every_run(jobs_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out = tmp_path / "out"
    result = cli(jobs_dir, "run-all", "--concurrency", "2", "--seeds", "0,1", "--epochs", "1", "--device", "cpu",
                 "--output-dir", str(out))
    assert result.exit_code == 0, result.output
    runs = [f"{job}/seed{seed}/{name}" for job in "ab" for seed in (0, 1) for name in ("lora/lora.safetensors", "lora/ptuning_artifact.json", "metrics.jsonl", "result.json")]
    assert [f for f in files(out) if not f.startswith("plots/") and f != "TABLES.md"] == [*runs, "logs/a.log", "logs/b.log"]
    share = max(1, (os.cpu_count() or 1) // 2)  # each child's share of the cores
    for job in "ab":
        for seed in (0, 1):
            data = json.loads((out / job / f"seed{seed}" / "result.json").read_text())
            assert data["status"] == "completed" and data["config"]["seed"] == seed and len(data["epochs"]) == 1
            assert data["environment"]["threads"] == {"torch": share, "omp_num_threads": str(share)}
    assert "lora_" not in result.stderr and "ptuning: error" not in result.output


def spawn_run_all(jobs_dir: Path, out: Path) -> tuple[subprocess.Popen, list[str]]:
    """`run-all --concurrency 2` in a session of its own (as a terminal would run it), its children paused after the
    first training step (PTUNING_TEST_PAUSE); returns once both have paused."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", PAUSE_ENV: "1:1"}
    proc = subprocess.Popen([sys.executable, "-m", "ptuning.cli", "--jobs-dir", str(jobs_dir), "run-all", "--concurrency", "2",
                             "--device", "cpu", "--output-dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, start_new_session=True)
    lines, paused = [], set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and paused != {"a", "b"}:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        for job in "ab":
            if line.startswith(f"[{job}] ptuning-test: paused at epoch 1 step 1"):
                paused.add(job)
    if paused != {"a", "b"}:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the children never paused:\n" + "".join(lines) + proc.stderr.read())
    return proc, lines


@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c-to-the-terminal-group", "sigterm-to-the-parent"])
def test_a_signal_lets_every_child_checkpoint_then_the_printed_command_resumes_them(jobs_dir, reference, tmp_path, signum,
                                                                                     to_group):
    out = tmp_path / "out"
    proc, _ = spawn_run_all(jobs_dir, out)
    if to_group:  # what Ctrl-C in a terminal does: the signal goes to the whole foreground process group
        os.killpg(proc.pid, signum)
    else:  # docker stop, a scheduler: the parent alone
        proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signum, stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert "stopped at once" not in stdout  # each child had one signal, not two
    for job in "ab":
        assert f"[{job}] ptuning: interrupted by {signal.Signals(signum).name}: {job} stopped in epoch 1/2 after step 1 of 2" in stdout
        state = checkpoint.load(out / job / "seed0" / "checkpoint.pt")
        assert (state["step"], state["epochs"]) == (1, [])  # the step in progress, not the last epoch's end
    last = stderr.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last == (f"ptuning: interrupted by {name}: stopped a, b (each says above what it saved); to resume, run: "
                    f"python -m ptuning.cli --jobs-dir {jobs_dir} run-all --concurrency 2 --device cpu --output-dir {out}")

    resumed = cli(jobs_dir, "run-all", "--concurrency", "2", "--device", "cpu", "--output-dir", str(out))
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.count("resuming from") == 2 and resumed.output.count("epoch 1, after step 1 of 2") == 2
    assert metrics(out, "a") == reference and metrics(out, "b") == reference

"""`ptuning run-all --concurrency K`: K jobs at once, each in its own `ptuning run JOB` process.

One GPU runs several small training processes faster in aggregate than one (each step leaves the GPU
mostly idle; see docs/speed.md). Every child gets the same options as the parent; its
output goes to `<output-dir>/logs/<job>.log` and is echoed line by line with a `[job]` prefix. On CPU each
child gets an even share of the cores (OMP_NUM_THREADS) unless the caller set it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Callable, Sequence


def child_command(job_name: str, jobs_dir: Path | None, options: Sequence[str]) -> list[str]:
    """The command line of one child: `python -m ptuning.cli [--jobs-dir D] run OPTIONS... -- JOB` (the name after
    `--`, so that no job name is read as an option)."""
    cmd = [sys.executable, "-m", "ptuning.cli"]
    if jobs_dir is not None:
        cmd += ["--jobs-dir", str(Path(jobs_dir).resolve())]
    return cmd + ["run", *options, "--", job_name]


def child_env(concurrency: int, device: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    on_cpu = (device or "auto").startswith("cpu") or (device in (None, "auto") and not _cuda_available())
    if on_cpu and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // concurrency))
    return env


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def run_concurrently(job_names: Sequence[str], options: Sequence[str], output_dir: Path, concurrency: int,
                     jobs_dir: Path | None = None, device: str | None = None,
                     echo: Callable[[str], None] = print) -> list[tuple[str, int]]:
    """Run every job in its own process, at most `concurrency` at a time, in the given order.

    Returns [(job, exit status)] of the jobs that failed (non-zero status), in job order.
    """
    logs = Path(output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = child_env(concurrency, device)
    queue = deque(job_names)
    running: list[tuple[str, subprocess.Popen, threading.Thread]] = []
    status: dict[str, int] = {}
    lock = threading.Lock()

    def pump(name: str, proc: subprocess.Popen, log_path: Path) -> None:
        prefix = f"[{name}]"
        with open(log_path, "w") as log:
            for line in proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                log.flush()
                text = line.rstrip("\n")
                with lock:
                    echo(text if text.startswith(prefix) or prefix in text[:80] else f"{prefix} {text}")

    def start(name: str) -> None:
        cmd = child_command(name, jobs_dir, options)
        (logs / f"{name}.log").parent.mkdir(parents=True, exist_ok=True)  # a grid's point: logs/<job>/<point>.log
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
        thread = threading.Thread(target=pump, args=(name, proc, logs / f"{name}.log"), daemon=True)
        thread.start()
        running.append((name, proc, thread))

    try:
        while queue or running:
            while queue and len(running) < concurrency:
                start(queue.popleft())
            name, proc, thread = running[0]
            # wait for whichever child ends first
            while True:
                done = next(((n, p, t) for n, p, t in running if p.poll() is not None), None)
                if done:
                    break
                try:
                    running[0][1].wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            name, proc, thread = done
            thread.join()
            running.remove(done)
            status[name] = proc.returncode
            if proc.returncode != 0:
                with lock:
                    echo(f"[{name}] FAILED (exit status {proc.returncode}); log: {logs / f'{name}.log'}")
    finally:
        for _, proc, _ in running:  # interrupted: stop only the children we started
            proc.terminate()
        for _, proc, thread in running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            thread.join(timeout=1)
    return [(n, status[n]) for n in job_names if status.get(n, 1) != 0]

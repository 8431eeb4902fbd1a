"""`ptuning run-all --concurrency K`: K jobs at once, each in its own `ptuning run JOB` process.

One GPU runs several small training processes faster in aggregate than one (each step leaves the GPU
mostly idle; see docs/speed.md). Every child gets the same options as the parent; its
output goes to `<output-dir>/logs/<job>.log` (a grid's point: `logs/<job>/<point>.log`) and is echoed line by line with a `[job]` prefix. On CPU each
child gets an even share of the cores (OMP_NUM_THREADS) unless the caller set it.

Each child runs in a process group of its own, so a Ctrl-C in the terminal reaches only this process, which passes
the signal on, once, to every child: each finishes its training step, writes a checkpoint and exits (a second signal
is passed on too, and stops them at once). No new job starts after a signal. A child that is still running
`STOP_GRACE_SECONDS` after the first signal is killed. Then `Interrupted` is raised, so the command exits 130 (SIGINT)
or 143 (SIGTERM) with the command that resumes, as a serial run does.

The logs are never written through a symbolic link: the `logs` folder is opened without following one, and each
log is a new file renamed over the old one.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

from ptuning.atomic import write_error
from ptuning.errors import PtuningError
from ptuning.run.interrupt import SIGNALS, Interrupted

#: how long the children get, after the first SIGINT/SIGTERM, to finish their step and write their checkpoint
STOP_GRACE_SECONDS = 60.0


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


class Logs:
    """`<output-dir>/logs/`, opened once without following a symbolic link; `open(job)` starts `<job>.log` afresh (a
    grid's point, `job/point`, logs to `logs/<job>/<point>.log`, in a folder also opened without following a link)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(exist_ok=True)
            self.fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise self._refusal(self.directory, exc) from None

    @staticmethod
    def _refusal(path: Path, exc: OSError) -> PtuningError:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and path.is_symlink():
            return PtuningError(f"{path} is a symbolic link; ptuning does not write through one (remove it, or pass "
                                "another --output-dir)")
        return write_error(path, exc)

    def path(self, job: str) -> Path:
        return self.directory / f"{job}.log"

    def check(self, jobs: Sequence[str]) -> None:
        """Refuse, before any job starts, a log (or a grid's log folder) that is a link: its target would be written."""
        for job in jobs:
            *folders, _ = job.split("/")
            names = [*(self.directory / "/".join(folders[: i + 1]) for i in range(len(folders))), self.path(job)]
            for path in names:
                try:
                    found = os.stat(path.relative_to(self.directory), dir_fd=self.fd, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    break
                is_log = path == names[-1]
                if not (stat.S_ISREG(found.st_mode) and found.st_nlink == 1 if is_log else stat.S_ISDIR(found.st_mode)):
                    raise PtuningError(f"{path} is not a plain {'file' if is_log else 'folder'} of its own (a symbolic or "
                                       "hard link, or something else); ptuning does not write through it (remove it, or "
                                       "pass another --output-dir)")

    def _folder(self, job: str) -> int:
        """An open descriptor of the folder `job`'s log goes in (made if missing, never through a link)."""
        fd = os.dup(self.fd)
        for part in job.split("/")[:-1]:
            try:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                raise self._refusal(self.path(job).parent, exc) from None
            os.close(fd)
            fd = inner
        return fd

    def open(self, job: str):
        """A new, empty `<job>.log` (a new file, renamed over whatever had the name), open for writing."""
        folder = self._folder(job)
        name = f"{job.split('/')[-1]}.log"
        tmp = f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder)
            try:
                os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
            except OSError:
                os.close(fd)
                os.unlink(tmp, dir_fd=folder)
                raise
        except OSError as exc:
            raise write_error(self.path(job), exc) from None
        finally:
            os.close(folder)
        return os.fdopen(fd, "w", encoding="utf-8")

    def close(self) -> None:
        os.close(self.fd)


class _Relay:
    """While children run: SIGINT/SIGTERM to this process are counted, and `sync` passes each on to every running child
    once. The handler only counts (it may run between any two bytecodes); the sending is the main loop's."""

    def __init__(self) -> None:
        self.signals: list[int] = []
        self.at = 0.0
        self.sent: dict[subprocess.Popen, int] = {}
        self._previous: dict[int, object] = {}

    @property
    def signum(self) -> int | None:
        return self.signals[0] if self.signals else None

    def _handle(self, signum, frame) -> None:
        if not self.signals:
            self.at = time.monotonic()
            sys.stderr.write(f"ptuning: {signal.Signals(signum).name} received: each running job stops after its current "
                             "training step and writes a checkpoint; no new job starts (send it again to stop them at once)\n")
            sys.stderr.flush()
        self.signals.append(signum)

    def add(self, proc: subprocess.Popen) -> None:
        self.sent[proc] = 0

    def sync(self) -> None:
        """Send every running child the signals it has not had yet."""
        received = list(self.signals)
        for proc, sent in self.sent.items():
            for signum in received[sent:]:
                if proc.poll() is None:
                    try:
                        proc.send_signal(signum)
                    except ProcessLookupError:
                        pass
            self.sent[proc] = len(received)

    def __enter__(self) -> "_Relay":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def run_concurrently(job_names: Sequence[str], options: Sequence[str], output_dir: Path, concurrency: int,
                     jobs_dir: Path | None = None, device: str | None = None,
                     echo: Callable[[str], None] = print) -> list[tuple[str, int]]:
    """Run every job in its own process, at most `concurrency` at a time, in the given order.

    Returns [(job, exit status)] of the jobs that failed (non-zero status), in job order. Raises `Interrupted` when a
    SIGINT or SIGTERM stopped the run (after every child has exited).
    """
    logs = Logs(Path(output_dir) / "logs")
    try:
        logs.check(job_names)
        return _run(job_names, options, logs, concurrency, jobs_dir, child_env(concurrency, device), echo)
    finally:
        logs.close()


def _run(job_names, options, logs: Logs, concurrency: int, jobs_dir, env, echo) -> list[tuple[str, int]]:
    queue = deque(job_names)
    running: list[tuple[str, subprocess.Popen, threading.Thread]] = []
    status: dict[str, int] = {}
    failed: set[str] = set()  # before any signal
    lock = threading.Lock()

    def say(text: str) -> None:
        with lock:
            echo(text)

    def pump(name: str, proc: subprocess.Popen, log) -> None:
        prefix = f"[{name}]"
        with log:
            for line in proc.stdout:  # type: ignore[union-attr]
                if not log.closed:
                    try:
                        log.write(line)
                        log.flush()
                    except OSError as exc:  # a full disk: keep echoing (and draining the child's pipe), stop logging
                        say(f"{prefix} ptuning: warning: cannot write {logs.path(name)} any more: {exc.strerror or exc}")
                        log.close()
                text = line.rstrip("\n")
                say(text if text.startswith(prefix) or prefix in text[:80] else f"{prefix} {text}")

    def start(name: str) -> None:
        log = logs.open(name)
        try:  # its own process group: a Ctrl-C in the terminal reaches only us, and we pass it on once
            proc = subprocess.Popen(child_command(name, jobs_dir, options), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1, env=env, process_group=0)
        except BaseException:
            log.close()
            raise
        relay.add(proc)
        thread = threading.Thread(target=pump, args=(name, proc, log), daemon=True)
        thread.start()
        running.append((name, proc, thread))

    def reap(done) -> None:
        name, proc, thread = done
        thread.join()
        running.remove(done)
        status[name] = proc.returncode
        if proc.returncode != 0 and relay.signum is None:
            failed.add(name)
            say(f"[{name}] FAILED (exit status {proc.returncode}); log: {logs.path(name)}")

    killed = False
    with _Relay() as relay:
        try:
            while running or (queue and relay.signum is None):
                while queue and relay.signum is None and len(running) < concurrency:
                    start(queue.popleft())
                relay.sync()
                done = next(((n, p, t) for n, p, t in running if p.poll() is not None), None)
                if done:
                    reap(done)
                    continue
                if relay.signum is not None and time.monotonic() - relay.at > STOP_GRACE_SECONDS and not killed:
                    killed = True
                    for name, proc, _ in running:
                        say(f"[{name}] still running {STOP_GRACE_SECONDS:.0f} s after the signal: killed (its last checkpoint is kept)")
                        proc.kill()
                try:
                    running[0][1].wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if running and not relay.signals:  # an error of our own: stop the children we started, each checkpoints
                relay.signals.append(signal.SIGTERM)
            relay.sync()
            for _, proc, thread in running:
                try:
                    proc.wait(timeout=STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                thread.join(timeout=1)
    if relay.signum is not None:
        stopped = [n for n in job_names if n in status and status[n] != 0 and n not in failed]
        what = f"stopped {', '.join(stopped)} (each says above what it saved)" if stopped else "no job was running"
        raise Interrupted(relay.signum, what + (f"; {len(queue)} job(s) not started" if queue else ""))
    return [(n, status[n]) for n in job_names if status.get(n, 1) != 0]

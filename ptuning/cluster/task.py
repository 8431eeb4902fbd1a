"""One task of `ptuning submit`: a `ptuning run` command line, run on a node by submitit's task wrapper.

submitit pickles a `RunTask`: the command line, a few environment variables and a reference to this class, which
the node imports from its own installed ptuning (no code travels from the submitting machine). The command's
output goes straight to the task's log. This module imports nothing heavy: the wrapper stays small and starts fast.

Signals on SLURM (the array is submitted with `--requeue`):

- SIGTERM (`scancel`, `scontrol requeue`, preemption) reaches every process of the task. submitit's wrapper
  ignores it; `ptuning run` finishes its training step, writes its checkpoint and exits (143). After a requeue or
  a preemption SLURM starts the task again, with the same command line, and the run resumes from the checkpoint.
- SIGUSR2 is submitit's time-limit warning (`--signal-before` seconds before the limit). `ptuning run` ignores it
  (it would kill a process that does not); submitit calls `checkpoint()`, which asks the run to stop with SIGTERM,
  waits until it has written its checkpoint and exited, and hands back the same task: submitit requeues it
  (`scontrol requeue`), at most `max_num_timeout` times.
- A restarted task (SLURM_RESTART_COUNT > 0) resumes the checkpoint its first start wrote instead of starting
  over: its `--force` comes with the submission's `--force-id`, which keeps what a run of that id wrote
  (docs/reliability.md). A command line with `--force` but no id (an older one) has `--force` dropped instead.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time

from ptuning.run.interrupt import SUBMIT_TASK_ENV as TASK_ENV  # the run it starts ignores SIGUSR2


#: how the task's own line about a failed run starts in the log (the run's own errors start "ptuning: error: ")
FAILED_PREFIX = "ptuning: task failed: "


def _ignore_usr2() -> None:  # runs in the child between fork and exec: an ignored signal stays ignored after exec
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def describe_status(status: int) -> str:
    """What an exit status of `ptuning run` means, in words."""
    if status < 0:
        name = signal.Signals(-status).name
        why = " (out of memory, or killed by hand)" if -status == signal.SIGKILL else ""
        return f"the run was killed by {name}{why}"
    if status > 128 and status - 128 in (signal.SIGTERM, signal.SIGINT):
        return f"the run stopped on {signal.Signals(status - 128).name} after writing its checkpoint"
    return f"the run exited with status {status}"


class RunTask:
    def __init__(self, command: list[str], label: str, env: dict[str, str] | None = None) -> None:
        self.command = list(command)
        self.label = label
        self.env = dict(env or {})
        self._proc: subprocess.Popen | None = None
        self._status: int | None = None  # the run's exit status when _stop_run reaped it

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_proc"], state["_status"] = None, None  # a running process does not travel with a requeued task
        return state

    def _command(self) -> list[str]:
        restarted = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
        if restarted and "--force-id" not in self.command:  # requeued: resume, never start over
            return [word for word in self.command if word != "--force"]
        return list(self.command)

    def _environment(self) -> dict[str, str]:
        env = {**os.environ, **self.env, TASK_ENV: "1", "PYTHONUNBUFFERED": "1"}
        if "OMP_NUM_THREADS" not in env and env.get("SLURM_CPUS_PER_TASK"):  # the CPUs SLURM gave, not the node's
            env["OMP_NUM_THREADS"] = env["SLURM_CPUS_PER_TASK"]
        return env

    def __call__(self) -> int:
        command, env = self._command(), self._environment()
        task = os.environ.get("SLURM_ARRAY_JOB_ID", "")
        task = f"{task}_{os.environ['SLURM_ARRAY_TASK_ID']}" if task else os.environ.get("SLURM_JOB_ID") or \
            f"local {os.environ.get('SUBMITIT_LOCAL_JOB_ID', os.getpid())}"
        gpus = env.get("CUDA_VISIBLE_DEVICES", "(not set)")
        print(f"ptuning: task {task} [{self.label}] on {socket.gethostname()}, CUDA_VISIBLE_DEVICES={gpus or '(none)'}, "
              f"restart {os.environ.get('SLURM_RESTART_COUNT') or 0}: {shlex.join(command)}", flush=True)
        self._proc, self._status = subprocess.Popen(command, env=env, preexec_fn=_ignore_usr2), None
        try:
            while self._status is None and self._proc.poll() is None:
                time.sleep(0.5)
        except BaseException:  # interrupted (Ctrl-C on a local run): let the run write its checkpoint first
            self._stop_run(timeout=60)
            raise
        status = self._status if self._status is not None else self._proc.returncode
        if status != 0:
            message = f"[{self.label}] {describe_status(status)}"
            print(f"{FAILED_PREFIX}{message}", file=sys.stderr, flush=True)
            raise RuntimeError(message)
        return status

    def _stop_run(self, timeout: float | None = None) -> None:
        """SIGTERM the run and wait until it exits (it writes its checkpoint first). Safe in a signal handler:
        reaps with os.waitpid, never through Popen's lock, which the interrupted loop may hold."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:  # reaped meanwhile by the loop in __call__
                return
            if pid:
                proc.returncode = self._status = os.waitstatus_to_exitcode(status)
                return
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(0.1)

    def checkpoint(self, *args, **kwargs):
        """submitit's hook for the time-limit warning: stop the run (it writes its checkpoint), then requeue."""
        from submitit.helpers import DelayedSubmission

        print(f"ptuning: [{self.label}] time limit near: stopping the run to requeue it", file=sys.stderr, flush=True)
        self._stop_run()
        return DelayedSubmission(self, *args, **kwargs)

"""SIGINT/SIGTERM: finish the current training step, write a checkpoint, exit 130/143 saying how to resume.

`StopRequest` is installed around `ptuning run`/`run-all`. The first signal only sets a flag; the
runner looks at it after every training step (and before training, and after every epoch), writes a
checkpoint at that point and raises `Interrupted`, which the CLI turns into one line with the exact
command that resumes, and exit status 128 + signal number. A second signal stops at once (the last
checkpoint written is kept).

Test hook (used by tests/run/test_reliability.py and tests/cluster/test_slurm.py only): with
PTUNING_TEST_PAUSE=EPOCH:STEP the runner, after finishing that training step, prints
"ptuning-test: paused at epoch E step S" on stderr and waits (at most 120 s) until a signal
arrives, so a test can kill or signal it at a known point.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)
PAUSE_ENV = "PTUNING_TEST_PAUSE"
#: set for the runs of `ptuning submit` (ptuning/cluster/task.py): SIGUSR2, the time-limit warning, is their task
#: wrapper's to act on, and would otherwise kill the run before it could write a checkpoint
SUBMIT_TASK_ENV = "PTUNING_SUBMIT_TASK"


class Interrupted(Exception):
    """Raised when a run stops on a signal; `detail` says what was saved."""

    def __init__(self, signum: int, detail: str) -> None:
        super().__init__(detail)
        self.signum = signum
        self.detail = detail

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise Interrupted(signum, "stopped at once on a second signal; the last checkpoint written is kept")
        self.signum = signum
        sys.stderr.write(
            f"ptuning: {signal.Signals(signum).name} received: stopping after the current training step "
            "and writing a checkpoint (send it again to stop at once)\n"
        )
        sys.stderr.flush()

    def check(self, detail: str) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum, detail)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            if os.environ.get(SUBMIT_TASK_ENV):
                self._previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def pause_hook(epoch: int, step: int, stop: StopRequest | None) -> None:
    """The PTUNING_TEST_PAUSE hook (see the module docstring); does nothing unless the variable is set."""
    want = os.environ.get(PAUSE_ENV)
    if not want or want != f"{epoch}:{step}":
        return
    sys.stderr.write(f"ptuning-test: paused at epoch {epoch} step {step}\n")
    sys.stderr.flush()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (stop is not None and stop.requested):
        time.sleep(0.02)

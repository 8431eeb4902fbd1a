"""A run's metrics as it goes: `metrics.jsonl` in its run directory, always, and any trackers asked for.

`metrics.jsonl` is one JSON object a line, flushed as it is written, so a run killed mid-epoch keeps every line
it wrote: an `event` of "start" (or "resume"), the training loss every `LOG_EVERY` steps ("step"), each epoch's
loss, accuracies, times and peak memory ("epoch"), and the reported figure ("end"). A resumed run appends to the
file; a run started afresh replaces it.

Trackers get the same numbers: `--tracker tensorboard` writes TensorBoard event files to `<run_dir>/tensorboard/`
(`pip install 'ptuning[tensorboard]'`; the scalars' names are in `TensorBoardTracker`). Another tracker
(Weights & Biases, MLflow) is a class with `log(values, step)` and `close()` registered in `TRACKERS`; ptuning
depends on none of them.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import stat
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from ptuning.errors import PtuningError

METRICS_FILE = "metrics.jsonl"
#: the training loss goes to the log every this many steps (and the epoch's last step)
LOG_EVERY = 10


class Tracker(Protocol):
    """What a tracker must do: take scalar values at a global step, and close."""

    def log(self, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """Scalars to TensorBoard event files in `<run_dir>/tensorboard/`: train/loss, train/epoch_loss,
    eval/accuracy, eval/val_accuracy, time/train_seconds, time/eval_seconds (x axis: the global training step)."""

    package = "tensorboard"

    def __init__(self, rdir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(rdir / "tensorboard"))

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


#: tracker name -> class (constructed with the run directory)
TRACKERS: dict[str, type] = {"tensorboard": TensorBoardTracker}


def check_trackers(names) -> None:
    """One line, before anything runs, for an unknown tracker or one whose package is not installed."""
    for name in names:
        if name not in TRACKERS:
            raise PtuningError(f"unknown tracker {name!r}; known: {', '.join(sorted(TRACKERS))}")
        package = getattr(TRACKERS[name], "package", None)
        if package and importlib.util.find_spec(package) is None:
            raise PtuningError(f"--tracker {name} needs the {package} package: pip install 'ptuning[{name}]' (or make install)")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class MetricsLog:
    """metrics.jsonl of one run, plus its trackers. `fresh`: replace an earlier file (else append to it)."""

    def __init__(self, rdir: Path, trackers=(), fresh: bool = True, every: int = LOG_EVERY) -> None:
        self.path = Path(rdir) / METRICS_FILE
        self.every = every
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if fresh else os.O_APPEND)
        try:
            fd = os.open(self.path, flags & ~os.O_TRUNC, 0o644)
        except OSError as exc:
            reason = "it is a symbolic link; ptuning does not follow it" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
            raise PtuningError(f"cannot write {self.path}: {reason}; pass --output-dir with a writable directory") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:  # truncating a hard link would empty its twin too
            os.close(fd)
            raise PtuningError(f"cannot write {self.path}: it is not a plain file of its own (a hard link or a special "
                               "file); remove it, or pass another --output-dir")
        if fresh:
            os.ftruncate(fd, 0)
        self.file = os.fdopen(fd, "a", encoding="utf-8")
        self.writing = True
        if trackers and (Path(rdir) / "tensorboard").is_symlink():
            self.file.close()
            raise PtuningError(f"{Path(rdir) / 'tensorboard'} is a symbolic link; ptuning does not write through one "
                               "(remove it, or pass another --output-dir)")
        self.trackers = [TRACKERS[name](Path(rdir)) for name in trackers]

    def event(self, event: str, **fields: Any) -> None:
        """One line, written through to the file at once (a killed run keeps it). A write that fails (a full disk)
        is one warning, and the log stops there: the run goes on (its checkpoint says, in one line, if it cannot)."""
        if not self.writing:
            return
        try:
            self.file.write(json.dumps({"event": event, "time": _now(), **fields}) + "\n")
            self.file.flush()
        except OSError as exc:
            self.writing = False
            sys.stderr.write(f"ptuning: warning: cannot write {self.path} any more ({exc.strerror or exc}); the run goes on "
                             "without it\n")

    def _track(self, values: dict[str, float | None], step: int) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None}
        for tracker in self.trackers:
            tracker.log(values, step)

    def step(self, epoch: int, step: int, steps_per_epoch: int, loss: float) -> None:
        """A training step's loss, every `every` steps and at the epoch's last step."""
        if step % self.every and step != steps_per_epoch:
            return
        global_step = (max(epoch, 1) - 1) * steps_per_epoch + step
        self.event("step", epoch=epoch, step=step, global_step=global_step, loss=loss)
        self._track({"train/loss": loss}, global_step)

    def epoch(self, record: dict[str, Any], steps_per_epoch: int, **extra: Any) -> None:
        global_step = record["epoch"] * steps_per_epoch
        self.event("epoch", **record, **extra)
        self._track({"train/epoch_loss": record.get("train_loss"), "eval/accuracy": record.get("accuracy"),
                     "eval/val_accuracy": record.get("val_accuracy"), "time/train_seconds": record.get("train_seconds"),
                     "time/eval_seconds": record.get("eval_seconds")}, global_step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        try:
            self.file.close()
        except OSError:  # the last buffered line of a full disk: already warned about
            pass

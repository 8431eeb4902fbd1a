"""Writing files and directories so that readers never see half of one.

Everything is written under a temporary name in the target's own directory and renamed into
place. A failed write (full disk, read-only directory) removes the temporary and becomes one
`PtuningError` line; the previous version of the target, if any, is left untouched.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from ptuning.errors import PtuningError

#: what to do about an unwritable path, for the runs' files (results, checkpoints, trained parameters)
RUN_OUTPUT = "pass --output-dir with a writable directory"


def write_error(path: Path, exc: OSError, writable: str = RUN_OUTPUT) -> PtuningError:
    """The one line for an OSError while writing `path`, with what to do about it (`writable`: the option or setting
    that points somewhere else; a run resumes from its checkpoint, other commands just start again)."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space and rerun the same command" + (" (it resumes from the last checkpoint)" if writable == RUN_OUTPUT else "")
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = writable
    else:
        hint = "nothing was half-written; fix the problem and rerun the same command"
    return PtuningError(f"cannot write {path}: {reason}; {hint}")


def remove(path: Path) -> None:
    """Remove a file or a directory tree, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):  # not there, or its folder is a file: nothing to remove
            pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(path: Path, writer: Callable[[Path], object], writable: str = RUN_OUTPUT) -> Path:
    """Call `writer(tmp)` to write a file or a directory at `tmp`, then move it to `path`.

    An OSError is one line (`write_error`, with `writable` as the advice for an unwritable place).

    For a directory target that already exists, the old directory is renamed aside, the new one
    renamed in, and the old one removed: `path` is never a half-written directory.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(tmp)
        if tmp.is_file():
            _fsync(tmp)
            os.replace(tmp, path)
        elif tmp.is_dir():
            for child in tmp.rglob("*"):
                if child.is_file():
                    _fsync(child)
            if path.exists():
                old = path.parent / f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                os.replace(path, old)
                os.replace(tmp, path)
                remove(old)
            else:
                os.replace(tmp, path)
        else:
            raise OSError(errno.ENOENT, "nothing was written", str(tmp))
    except OSError as exc:
        remove(tmp)
        raise write_error(path, exc, writable) from None
    except BaseException:
        remove(tmp)
        raise
    return path

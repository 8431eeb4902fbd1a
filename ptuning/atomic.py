"""Writing files and directories so that readers never see half of one, and nobody can redirect the write.

Everything is written inside a fresh private folder (`.<name>.tmp-<pid>-XXXXXXXX`, mode 0700, made with
`tempfile.mkdtemp`) in the target's own directory and then renamed into place. The folder is new and only ours, so a
symbolic link planted in a shared output folder cannot make the write land elsewhere, and the rename replaces a link
at the target's name instead of following it. A failed write (full disk, read-only directory) removes the temporary
folder and becomes one `PtuningError` line; the previous version of the target, if any, is left untouched.

A write can fail without an OSError: `torch.save` to a path raises RuntimeError (`[enforce fail at
inline_container.cc]`), safetensors its own SafetensorError. `os_error` recovers what happened from the exception
and, failing that, from the filesystem (read-only, or no space left), so those are the same one line.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ptuning.errors import PtuningError

#: what to do about an unwritable path, for the runs' files (results, checkpoints, trained parameters)
RUN_OUTPUT = "pass --output-dir with a writable directory"
#: the names of the temporary folders (and of a directory target moved aside), for cleaning up after a killed run
TEMPORARY = re.compile(r"^\..+\.(tmp|old)-\d+-[A-Za-z0-9_]+$")


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


_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]|os error (\d+)")


def os_error(exc: BaseException, directory: Path | None = None) -> OSError | None:
    """The OSError behind a failed write: `exc` itself, one in its chain, an errno in its text (safetensors:
    "os error 28"), or else what the filesystem of `directory` says now (read-only, or full). None: not a write
    problem (a bug, which should show as one)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    found = _ERRNO_TEXT.search(str(exc))
    if found:
        number = int(found.group(1) or found.group(2))
        return OSError(number, os.strerror(number))
    if directory is not None:
        try:
            fs = os.statvfs(directory)
        except OSError:
            return None
        if fs.f_flag & os.ST_RDONLY:
            return OSError(errno.EROFS, os.strerror(errno.EROFS))
        if (fs.f_blocks and not fs.f_bavail) or (fs.f_files and not fs.f_favail):  # no blocks, or no inodes, left
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def remove(path: Path | None) -> None:
    """Remove a file or a directory tree, if it is there; a cleanup that fails (a read-only folder) is not an error."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:  # not there, its folder is a file, or it cannot be removed: nothing more to do
            pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    """Make a rename in `path` durable (a power cut after it keeps the new name); not every filesystem can."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def torch_writer(obj) -> Callable[[Path], None]:
    """A writer for `atomic_save` that saves `obj` with torch.save through an open file: a full disk is then an
    OSError (ENOSPC), where torch.save to a path raises a RuntimeError that names no cause."""

    def write(tmp: Path) -> None:
        import torch

        with open(tmp, "xb") as f:
            torch.save(obj, f)

    return write


def atomic_save(path: Path, writer: Callable[[Path], object], writable: str = RUN_OUTPUT) -> Path:
    """Call `writer(tmp)` to write a file or a directory at `tmp`, then move it to `path`.

    `tmp` is inside a fresh private folder next to `path`. A failed write is one line (`write_error`, with
    `writable` as the advice for an unwritable place).

    For a directory target that already exists, the old directory is moved aside, the new one renamed in, and the
    old one removed: `path` is never a half-written directory.
    """
    path = Path(path)
    work: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
        tmp = work / path.name
        writer(tmp)
        if tmp.is_file() and not tmp.is_symlink():
            _fsync(tmp)
            os.replace(tmp, path)
        elif tmp.is_dir() and not tmp.is_symlink():
            for child in tmp.rglob("*"):
                if child.is_file() and not child.is_symlink():
                    _fsync(child)
            if path.exists() or path.is_symlink():
                os.replace(path, work / ".old")  # aside, inside our folder: removed with it
            os.replace(tmp, path)
        else:
            raise OSError(errno.ENOENT, "nothing was written", str(tmp))
        _fsync_directory(path.parent)
    except PtuningError:
        remove(work)
        raise
    except Exception as exc:
        problem = os_error(exc, path.parent if path.parent.is_dir() else None)  # before the cleanup frees space
        remove(work)
        if problem is None:
            raise
        raise write_error(path, problem, writable) from None
    except BaseException:
        remove(work)
        raise
    remove(work)
    return path

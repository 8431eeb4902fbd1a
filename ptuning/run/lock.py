"""One run at a time per output directory: `<output-dir>/.ptuning.run.lock`, held with `fcntl.flock`.

The lock belongs to the open file, so the kernel drops it when the process dies, even by SIGKILL:
a lock file left behind by a killed run never blocks the next one. The file holds the holder's
pid, which a refused run names. It is removed on a clean exit.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from ptuning.errors import PtuningError

LOCK_FILE = ".ptuning.run.lock"
#: set by `run-all --concurrency` for its children: the pid of the parent that holds the lock
INHERIT_ENV = "PTUNING_LOCK_HOLDER"


class OutputLock:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.fd: int | None = None
        self.created_dir = False

    def _unwritable(self, exc: OSError) -> PtuningError:
        return PtuningError(
            f"cannot write to output directory {self.directory}: {exc.strerror or exc}; pass --output-dir with a writable directory"
        )

    def acquire(self) -> "OutputLock":
        inherited = os.environ.get(INHERIT_ENV)
        if inherited:  # a child of `run-all --concurrency`: its parent holds this directory's lock
            try:
                if self.path.read_text().strip() == inherited:
                    return self
            except OSError:
                pass
        try:
            self.created_dir = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unwritable(exc) from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                self._cleanup_dir()
                raise self._unwritable(exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise self._unwritable(exc) from None
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise PtuningError(
                    f"output directory {self.directory} is in use by another ptuning run (pid {holder}); "
                    "wait for it to finish, or pass another --output-dir"
                ) from None
            try:  # the holder we waited on may have removed the file: lock the one that is there now
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def _cleanup_dir(self) -> None:
        if self.created_dir:
            try:
                self.directory.rmdir()  # only if still empty: a refused or failed run leaves nothing
            except OSError:
                pass

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        self._cleanup_dir()

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

"""One run at a time per run directory: `<run_dir>/.ptuning.lock`, held with `fcntl.flock`.

A run directory is one job, one seed, one protocol (`<output-dir>/<job>/seed<N>/`, `heldout-seed<N>/`), so
different runs sharing an output folder (`run-all --concurrency`, SLURM array tasks) proceed together, while the
same job and seed started twice at once is refused.

The lock belongs to the open file, so the kernel drops it when the process dies, even by SIGKILL: a lock file left
behind by a killed run never blocks the next one. The file holds the holder's pid, which a refused run names. It is
removed on a clean exit, with the folders the lock created if they are still empty. The lock file is opened without
following a symbolic link, and the folders between the output folder and the run directory must not be links either:
a link planted in a shared output folder (or an unpacked results archive) cannot make ptuning write elsewhere.

`flock` is reliable on a local filesystem; across machines it depends on the filesystem (NFS emulates it with
byte-range locks, Lustre needs the `flock` mount option), which is why a cluster runs each run as one task.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from ptuning.errors import PtuningError

LOCK_FILE = ".ptuning.lock"


class RunLock:
    def __init__(self, directory: Path, root: Path | None = None) -> None:
        """The lock of run directory `directory`; `root`, the output folder it is in: the folders below `root` down to
        `directory` are refused if they are symbolic links."""
        self.directory = Path(directory)
        self.root = Path(root) if root is not None else None
        self.path = self.directory / LOCK_FILE
        self.fd: int | None = None
        self.created: list[Path] = []  # folders this lock made, deepest last

    def _unwritable(self, exc: OSError) -> PtuningError:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        hint = "free some space and rerun the same command" if full else "pass --output-dir with a writable directory"
        return PtuningError(f"cannot write to run directory {self.directory}: {exc.strerror or exc}; {hint}")

    def _check_links(self) -> None:
        if self.root is None:
            return
        folder = self.directory
        while folder != self.root and folder != folder.parent:
            if folder.is_symlink():
                raise PtuningError(f"{folder} is a symbolic link; ptuning does not write through one (remove it, or pass "
                                   "another --output-dir)")
            folder = folder.parent

    def _make_directory(self) -> None:
        """Make the missing folders down to the run directory, remembering which this lock made. Runs sharing an
        output folder make them at the same moment (`run-all --concurrency`, array tasks): a folder another run has
        just made is used as it is, and one another run has just removed (its own clean-up) is made again."""
        attempts = 20
        for attempt in range(attempts):
            missing = []
            folder = self.directory
            while not folder.exists() and folder != folder.parent:
                missing.append(folder)
                folder = folder.parent
            try:
                for folder in reversed(missing):
                    try:
                        folder.mkdir()
                    except FileExistsError:
                        if folder.is_symlink() or not folder.is_dir():
                            raise
                        continue  # another run made it just now: it is theirs to clean up
                    self.created.append(folder)
                return
            except FileNotFoundError:  # a parent another run made was removed again before ours went in: start over
                if attempt == attempts - 1:
                    raise

    def acquire(self) -> "RunLock":
        self._check_links()
        try:
            self._make_directory()
        except OSError as exc:
            self._cleanup_dirs()
            raise self._unwritable(exc) from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                self._cleanup_dirs()
                if exc.errno == errno.ELOOP:
                    raise PtuningError(f"{self.path} is a symbolic link; ptuning does not follow it (remove it, or pass another "
                                       "--output-dir)") from None
                raise self._unwritable(exc) from None
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:  # a hard link would be truncated with its twin
                os.close(fd)
                self._cleanup_dirs()
                raise PtuningError(f"{self.path} is not a plain file of its own (a hard link or a special file); ptuning "
                                   "does not write to it (remove it, or pass another --output-dir)")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise self._unwritable(exc) from None
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise PtuningError(
                    f"run directory {self.directory} is in use by another ptuning run (pid {holder}): the same job and seed is "
                    "running; wait for it to finish, or pass another --output-dir"
                ) from None
            try:  # the holder we waited on may have removed the file: lock the one that is there now
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: the lock is held all the same; say so only if nothing can be written
            os.close(fd)
            self._remove_file()
            self._cleanup_dirs()
            raise self._unwritable(exc) from None
        self.fd = fd
        return self

    def _remove_file(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass

    def _cleanup_dirs(self) -> None:
        for folder in reversed(self.created):
            try:
                folder.rmdir()  # only if still empty: a refused or failed run leaves nothing
            except OSError:
                break
        self.created = []

    def release(self) -> None:
        if self.fd is None:
            return
        self._remove_file()
        os.close(self.fd)
        self.fd = None
        self._cleanup_dirs()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

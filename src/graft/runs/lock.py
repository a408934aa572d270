"""``RUN_DIR/.graft.lock``: one writer per run folder, and who it is.

The lock is an OS file lock (``fcntl.flock``) on ``.graft.lock``, which holds the
writer's pid. The OS drops the lock when the process dies, however it dies (kill -9,
a segfault), so a stale lock file is simply free: no guessing from pids or ages.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from graft.errors import GraftError
from graft.runs import files
from graft.runs.layout import LOCK_FILE

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the pid is still recorded
    fcntl = None


class RunLocked(GraftError):
    """Another live process is writing the run folder."""


_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


def _not_ours(path: Path, what: str) -> GraftError:
    return GraftError(
        f"Run folder {path.parent}: {path.name} is {what}, not graft's lock file; "
        "refusing to open or change it.",
        hint=f"remove {path} if you did not put it there, or pass another out=DIR.",
    )


def _open(path: Path, create: bool) -> int | None:
    """A descriptor of ``path``, graft's lock file: opened without following a link,
    created exclusively, and refused (one clear error) unless it is a regular file with
    one name that holds nothing but a pid. ``None``: absent and not ``create``."""
    try:
        for _ in range(100):  # created, or opened if it exists (removed in between: again)
            if create:
                try:
                    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _FLAGS, 0o644)
                except FileExistsError:
                    pass
            try:
                fd = os.open(path, (os.O_RDWR if create else os.O_RDONLY) | _FLAGS)
                break
            except FileNotFoundError:
                if not create:
                    return None
        else:
            raise OSError(errno.EAGAIN, "created and removed again and again", str(path))
    except OSError as exc:
        if os.path.islink(path) or exc.errno == errno.ELOOP:
            raise _not_ours(path, "a symbolic link") from None
        if exc.errno in files.NOT_WRITABLE:
            raise files.not_writable(path, exc) from None
        raise
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "not a regular file"
    elif info.st_nlink != 1:
        problem = f"a file with {info.st_nlink} hard links"
    elif info.st_size > 32 or not (os.read(fd, 33).strip() or b"0").isdigit():
        problem = "a file that does not hold a pid"
    if problem is not None:
        os.close(fd)
        raise _not_ours(path, problem)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def holder(run_dir: str | os.PathLike) -> int | None:
    """The pid of the live process that holds ``run_dir``'s lock, or ``None`` if free."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = _open(path, create=False)
    except GraftError:
        return None  # not graft's lock file: nobody holds it
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as handle:
        if fcntl is None:  # cannot tell: trust the file
            return -1
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


class RunLock:
    """Hold ``run_dir``'s lock: ``acquire()`` refuses when a live process holds it, and
    when ``.graft.lock`` is not graft's (a link, a folder, a file with other content)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self._handle = None

    def acquire(self) -> RunLock:
        while True:
            handle = os.fdopen(_open(self.path, create=True), "r+b")
            if fcntl is not None:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    handle.seek(0)
                    pid = handle.read().decode("ascii", "replace").strip() or "?"
                    handle.close()
                    raise RunLocked(
                        f"Run folder {self.path.parent} is in use by another graft process "
                        f"(pid {pid}).",
                        hint="wait for it to finish, or pass another out=DIR.",
                    ) from None
                # The file may have been removed by the previous holder in between.
                if self._same(handle):
                    break
                handle.close()
                continue
            break
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()).encode())
        handle.flush()
        self._handle = handle
        return self

    def _same(self, handle) -> bool:
        """Whether ``self.path`` is still the file ``handle`` holds (not a link to it)."""
        try:
            now = os.lstat(self.path)
        except OSError:
            return False
        mine = os.fstat(handle.fileno())
        return stat.S_ISREG(now.st_mode) and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        if self._handle is None:
            return
        if self._same(self._handle):  # never a file put in its place since
            with contextlib.suppress(OSError):
                self.path.unlink()
        self._handle.close()  # closing drops the flock
        self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

"""``RUN_DIR/.graft.lock``: one writer per run folder, and who it is.

The lock is an OS file lock (``fcntl.flock``) on ``.graft.lock``, which holds the
writer's pid. The OS drops the lock when the process dies, however it dies (kill -9,
a segfault), so a stale lock file is simply free: no guessing from pids or ages.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from graft.errors import GraftError
from graft.runs.layout import LOCK_FILE

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the pid is still recorded
    fcntl = None


class RunLocked(GraftError):
    """Another live process is writing the run folder."""


def holder(run_dir: str | os.PathLike) -> int | None:
    """The pid of the live process that holds ``run_dir``'s lock, or ``None`` if free."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return None
    if fcntl is None:  # cannot tell: trust the file
        return -1
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


class RunLock:
    """Hold ``run_dir``'s lock: ``acquire()`` refuses when a live process holds it."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self._handle = None

    def acquire(self) -> RunLock:
        while True:
            handle = open(self.path, "a+")  # noqa: SIM115  (held until release)
            if fcntl is not None:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    handle.seek(0)
                    pid = handle.read().strip() or "?"
                    handle.close()
                    raise RunLocked(
                        f"Run folder {self.path.parent} is in use by another graft process "
                        f"(pid {pid}).",
                        hint="wait for it to finish, or pass another out=DIR.",
                    ) from None
                # The file may have been removed by the previous holder in between.
                with contextlib.suppress(OSError):
                    if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                        break
                handle.close()
                continue
            break
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._handle.close()  # closing drops the flock
        self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

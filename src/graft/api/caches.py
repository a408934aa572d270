"""``graft cache``: what graft's caches hold on disk (by kind: backbone features, bottom
activations...), how big and how old, and clearing them (all, or what is older than an age).

The root is ``$GRAFT_CACHE`` or ``~/.cache/keras-graft`` (:func:`graft.training.cache.default_dir`
is its ``features`` folder); a run's ``cache_dir`` setting puts its entries elsewhere. An
entry is the files of one key (``KEY.json`` + ``KEY.npy``...); a file still being written
(``.part``) by a live process is left alone. Nothing here imports Keras.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from graft.errors import GraftError

#: A part file younger than this may still be written by a live run: never removed.
PART_GRACE_SECONDS = 3600

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def cache_root() -> Path:
    """``$GRAFT_CACHE`` or ``~/.cache/keras-graft``."""
    return Path(os.environ.get("GRAFT_CACHE") or Path.home() / ".cache" / "keras-graft")


def parse_age(text: str) -> float:
    """Seconds in ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"`` (a bare number: days)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text).lower())
    if not found:
        raise GraftError(
            f"older_than must be an age like 30m, 12h, 7d or 2w. Received: older_than={text!r}"
        )
    return float(found.group(1)) * _UNITS[found.group(2) or "d"]


@dataclass(frozen=True)
class KindUsage:
    """One kind of cache (a subfolder of the root): its entries, bytes and ages."""

    kind: str
    entries: int
    bytes: int
    newest_seconds: float | None
    oldest_seconds: float | None


def _entries(folder: Path) -> dict[str, list[Path]]:
    """The files of ``folder`` (recursively) grouped by entry (the key before the first dot)."""
    groups: dict[str, list[Path]] = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            key = str(path.parent / path.name.split(".", 1)[0])
            groups.setdefault(key, []).append(path)
    return groups


def _in_progress(files: list[Path], now: float) -> bool:
    fresh = [p for p in files if now - p.stat().st_mtime < PART_GRACE_SECONDS]
    return any(p.name.endswith(".part") for p in fresh)


def usage(root: str | os.PathLike | None = None) -> list[KindUsage]:
    """Entries, size and ages per kind of cache under ``root`` (default: :func:`cache_root`)."""
    root = Path(root) if root is not None else cache_root()
    now, out = time.time(), []
    if not root.is_dir():
        return out
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        groups = _entries(folder)
        ages = [now - max(p.stat().st_mtime for p in files) for files in groups.values()]
        size = sum(p.stat().st_size for files in groups.values() for p in files)
        out.append(
            KindUsage(
                folder.name,
                len(groups),
                size,
                min(ages) if ages else None,
                max(ages) if ages else None,
            )
        )
    return out


def clear(
    root: str | os.PathLike | None = None,
    older_than: str | float | None = None,
    kind: str | None = None,
) -> tuple[int, int]:
    """Remove cache entries: all of them, or those last written more than ``older_than``
    ago (an age like ``"7d"``, or seconds); ``kind``: only that subfolder.

    Returns:
        ``(entries removed, bytes freed)``.
    """
    root = Path(root) if root is not None else cache_root()
    limit = older_than
    if isinstance(older_than, str):
        limit = parse_age(older_than)
    now, removed, freed = time.time(), 0, 0
    if not root.is_dir():
        return 0, 0
    folders = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    if kind is not None:
        folders = [p for p in folders if p.name == kind]
        if not folders:
            raise GraftError(f"No cache of kind {kind!r} in {root}.")
    for folder in folders:
        for files in _entries(folder).values():
            newest = max(p.stat().st_mtime for p in files)
            if _in_progress(files, now) or (limit is not None and now - newest <= limit):
                continue
            freed += sum(p.stat().st_size for p in files)
            for path in files:
                path.unlink(missing_ok=True)
            removed += 1
        for sub in sorted(folder.rglob("*"), reverse=True):  # emptied subfolders
            if sub.is_dir() and not sub.is_symlink() and not any(sub.iterdir()):
                shutil.rmtree(sub, ignore_errors=True)
    return removed, freed

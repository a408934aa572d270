"""Atomic io for the run folder (its file names: :mod:`graft.runs.layout`).

Files are written to a temporary name in the same folder and renamed into place, so a
crash never leaves a half-written artifact next to good ones.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import yaml

from graft.errors import GraftError
from graft.runs import layout
from graft.runs.layout import (  # noqa: F401  (the names callers reach as runs.X)
    CONFIG_FILE,
    HISTORY_FILE,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_FILE,
)


class DiskFullError(GraftError, OSError):
    """The disk holding the run folder or cache is full (also an ``OSError``)."""


#: The errors of a folder graft may not write in (a read-only disk, no permission).
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _disk_full(path: Path, exc: OSError) -> OSError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"No space left on the device while writing {path}.",
            hint="free some space, or pass another out=DIR (or cache_dir=DIR for the cache).",
        )
    if exc.errno in NOT_WRITABLE:
        return not_writable(path, exc)
    return exc


def not_writable(path, exc: OSError) -> GraftError:
    """One clear error for a file graft cannot write (read-only disk, permissions)."""
    return GraftError(
        f"Cannot write {path}: {exc.strerror or 'not writable'}.",
        hint="make the folder writable, or pass another out=DIR.",
    )


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        for line in Path("/proc/self/status").read_text("ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)  # no other way to read it: set and restore at once
    os.umask(current)
    return current


def shared_mode(directory: bool = False) -> int:
    """The mode a new file (0666) or folder (0777) gets under the umask, as ``open`` gives:
    a teammate reads ``model.keras`` and ``report.html`` wherever the umask allows."""
    return (0o777 if directory else 0o666) & ~_umask()


def refuse_foreign(path: str | os.PathLike, folder: bool = False) -> None:
    """Refuse (one clear error) when ``path`` exists as something graft does not write
    there: a symbolic link (whose target graft would change or fill), or a folder where
    a file goes (a file where a folder goes). Nothing is followed, truncated or removed."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        what = "a symbolic link"
    elif folder and not stat.S_ISDIR(info.st_mode):
        what = "not a folder"
    elif not folder and not stat.S_ISREG(info.st_mode):
        what = "not a regular file"
    else:
        return
    raise GraftError(
        f"{path} is {what}, which graft did not create; refusing to write through or replace it.",
        hint=f"move {path} away if you did not put it there, or pass another out=DIR.",
    )


def own_folder(path: str | os.PathLike) -> Path:
    """Create ``path``, a folder graft keeps inside a run folder (``checkpoint/``), or
    use it as it is; refused when it is a link or not a folder (never followed)."""
    path = Path(path)
    refuse_foreign(path, folder=True)
    path.mkdir(parents=True, exist_ok=True)
    refuse_foreign(path, folder=True)  # raced: something else appeared
    return path


@contextlib.contextmanager
def _replacing(path: Path, suffix: str):
    """A fresh temporary file name next to ``path`` (mode as the umask gives): renamed to
    ``path`` when the block succeeds, removed when it fails. The one rename-or-clean rule."""
    path.parent.mkdir(parents=True, exist_ok=True)
    refuse_foreign(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise _disk_full(path, exc) from None
    os.fchmod(fd, shared_mode())  # mkstemp makes 0600; the artifact follows the umask
    try:
        yield fd, tmp
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _disk_full(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """Open a temporary file next to ``path``; on success it is synced and renamed to
    ``path``, on failure it is removed. Readers never see a half-written file."""
    text = "b" not in mode
    with _replacing(Path(path), ".tmp") as (fd, _):
        with open(fd, mode, **({"encoding": "utf-8", "newline": ""} if text else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    with atomic_open(path, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_json(path, obj) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=_plain) + "\n")


def write_yaml(path, obj) -> Path:
    return atomic_write(path, yaml.safe_dump(_plain_tree(obj), sort_keys=False))


def write_csv(path, rows: list[dict]) -> Path:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, buffer.getvalue())


def save_model(model, path) -> Path:
    """Save a Keras model atomically (Keras writes a zip; we rename it into place).

    A model compiled on PyTorch is written with its optimizer named by Keras's public
    class (see :func:`portable_optimizer`), so the file loads on every backend.
    """
    path = Path(path)
    with _replacing(path, ".keras") as (fd, tmp):
        os.close(fd)
        model.save(tmp)
        if str(tmp).endswith(".keras"):
            portable_optimizer(tmp)
    return path


#: Where Keras's backend-specific optimizer classes live (torch: torch_adam.Adam, ...).
_BACKEND_OPTIMIZERS = "keras.src.backend."


def _public_optimizers(node) -> bool:
    """Rename backend-specific optimizer classes in a Keras config to the public ones."""
    changed = False
    if isinstance(node, dict):
        module = node.get("module")
        if (
            isinstance(module, str)
            and module.startswith(_BACKEND_OPTIMIZERS)
            and ".optimizers." in module
        ):
            node["module"], node["registered_name"] = "keras.optimizers", None
            changed = True
        for value in node.values():
            changed = _public_optimizers(value) or changed
    elif isinstance(node, list):
        for value in node:
            changed = _public_optimizers(value) or changed
    return changed


def portable_optimizer(path) -> bool:
    """Make a ``.keras`` file's optimizer loadable on every backend; whether it changed.

    On PyTorch, Keras builds ``keras.optimizers.Adam`` as its torch subclass and saves
    that class's module (``keras.src.backend.torch.optimizers.torch_adam``), which no
    other backend can import: ``load_model`` there fails. The class's config is Keras's
    own, so ``config.json`` is rewritten to name ``keras.optimizers.Adam`` (which on torch
    builds the torch subclass again). Files without such a name are left as they are.
    """
    import zipfile

    with zipfile.ZipFile(path) as archive:
        try:
            config = json.loads(archive.read("config.json"))
        except KeyError:
            return False
        if not _public_optimizers(config):
            return False
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            if info.filename == "config.json":
                data = json.dumps(config).encode("utf-8")
            archive.writestr(info, data)
    return True


def copy_file(source, path) -> Path:
    """Copy ``source`` to ``path`` atomically (a copy in place or nothing)."""
    path = Path(path)
    with _replacing(path, path.suffix) as (fd, tmp):
        os.close(fd)
        shutil.copyfile(source, tmp)
    return path


def prepare(run_dir: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> Path:
    """Create ``run_dir``, or make an existing one ready for a new run.

    A non-empty folder is refused, except one left by a run that stopped before its
    first checkpoint (only ``config.yaml``/``status.json``: nothing to lose). With
    ``overwrite``, the artifacts of the graft run in it are removed (its ``checkpoint/``
    too, so a later resume cannot pick up the old run); files graft did not create are
    kept, and a folder that is not a graft run but holds a file of a run's name is
    refused. With ``resume`` the folder is used as it is. Call it holding the folder's
    lock (:class:`graft.runs.lock.RunLock`).
    """
    path = Path(run_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise GraftError(f"out={run_dir} exists and is not a folder.")
    path.mkdir(parents=True, exist_ok=True)
    if resume:
        return path
    overwrite, ours = check_reusable(path, overwrite, run_dir)
    if overwrite:
        for name in sorted(ours):  # all checked before anything is removed
            target = path / name
            refuse_foreign(target, folder=target.is_dir() and not target.is_symlink())
        for name in sorted(ours):
            target = path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    return path


def check_reusable(path: Path, overwrite: bool, shown=None) -> tuple[bool, set[str]]:
    """Refuse an existing folder :func:`prepare` must not reuse (it only reads).

    Returns ``(overwrite, ours)``: whether its run files are to be replaced (also a
    failed start's, without ``overwrite``) and which of them it holds.
    """
    shown = path if shown is None else shown
    entries = {p.name for p in path.iterdir()} - {layout.LOCK_FILE}
    ours = entries & set(layout.ARTIFACTS)
    is_run = layout.STATUS_FILE in entries
    if entries and not overwrite:
        if is_run and entries <= set(layout.DISPOSABLE) and not _completed(path):
            overwrite = True  # a failed start: re-running the same command just works
        else:
            raise GraftError(
                f"Run folder {shown} already exists and is not empty; refusing to overwrite it.",
                hint="pass another out=DIR, or overwrite=True to replace its files.",
            )
    if overwrite and ours and not is_run:
        raise GraftError(
            f"out={shown} is not a graft run folder, yet it holds "
            f"{', '.join(sorted(ours))}; refusing to replace files graft did not create.",
            hint="pass another out=DIR.",
        )
    return overwrite, ours


def _completed(path: Path) -> bool:
    try:
        return (read_json(path / layout.STATUS_FILE, {}) or {}).get("status") == "completed"
    except (OSError, ValueError, AttributeError):
        return True  # unreadable: keep it


def read_json(path: str | os.PathLike, default=None):
    """The JSON content of ``path``, or ``default`` when there is no such file."""
    path = Path(path)
    return json.loads(path.read_text("utf-8")) if path.is_file() else default


def read_yaml(path: str | os.PathLike, default=None):
    """The YAML content of ``path``, or ``default`` when there is no such file."""
    path = Path(path)
    return (yaml.safe_load(path.read_text("utf-8")) or {}) if path.is_file() else default


def read_csv(path: str | os.PathLike) -> list[dict]:
    """The rows of a CSV file (``[]`` when there is no such file)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_labels(run_dir: str | os.PathLike) -> list[str]:
    path = Path(run_dir) / LABELS_FILE
    if not path.is_file():
        raise GraftError(f"{run_dir} has no {LABELS_FILE}; is it a graft run folder?")
    return list(json.loads(path.read_text("utf-8")))


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _plain_tree(obj):
    if isinstance(obj, dict):
        return {str(k): _plain_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain_tree(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return obj.item()
    return obj

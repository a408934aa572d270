"""Portable run configs: every path in ``config.yaml`` is absolute, as typed beside it.

A run's ``config.yaml`` must reproduce the run from any directory
(``graft train --config RUN/config.yaml``), so every path setting (the fields whose
metadata has ``path``: ``backbone`` and ``weights`` when they name an existing file,
``cache_dir``) and every data source is stored absolute. What the user typed is kept in
the run-record key ``as_typed`` (``{"backbone": "../models/cnn.keras",
"data.train": "pets"}``), which ``--config`` skips like every run-record key.

Each of these absolute paths is also recorded relative to the run folder
(``run_relative``): a resume uses the absolute path and falls back to the run-relative
one, so a run folder moved together with its data (and models) still resumes.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from graft.config.names import WEIGHT_NAMES
from graft.config.settings import TrainConfig

#: ``{setting: "always" | "existing"}`` (see :func:`graft.config.fields.setting`).
PATH_SETTINGS = {
    f.name: f.metadata["path"] for f in dataclasses.fields(TrainConfig) if f.metadata.get("path")
}
#: The run-record key holding the spellings as typed.
AS_TYPED = "as_typed"
#: The run-record key holding each absolute path relative to the run folder.
RUN_RELATIVE = "run_relative"
_SPLITS = ("train", "val", "test")


def absolute(value, kind: str = "always") -> str | None:
    """``value`` as an absolute path, or ``None`` when it is not a path (not a string,
    a URL-like preset, or -- for ``kind="existing"`` -- nothing by that name exists)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value) or "://" in str(value):
        return None
    if str(value).lower() in WEIGHT_NAMES:
        return None
    path = Path(value).expanduser()
    if kind == "existing" and not path.exists():
        return None
    return str(path.resolve())


def make_portable(
    config: dict, typed_sources: dict | None = None, run_dir: str | os.PathLike | None = None
) -> dict:
    """``config`` (a run's ``config.yaml`` mapping) with absolute paths, in place.

    Args:
        config: Settings and run record; its ``data`` mapping holds absolute sources.
        typed_sources: ``{"train" | "val" | "test": the path as typed, or None}`` (the
            data description's ``spelled``: in-memory data has no spelling).
        run_dir: The run folder, to record every path relative to it too.

    Returns:
        ``config``, with ``as_typed`` for every value whose spelling changed and
        ``run_relative`` for every absolute path.
    """
    typed = dict(config.get(AS_TYPED) or {})
    for name, kind in PATH_SETTINGS.items():
        value = config.get(name)
        full = absolute(value, kind)
        if full is not None and full != value:
            typed.setdefault(name, str(value))
            config[name] = full
    data = config.get("data") or {}
    for split, value in (typed_sources or {}).items():
        if value is not None and str(value) != data.get(split):
            typed.setdefault(f"data.{split}", str(value))
    if typed:
        config[AS_TYPED] = typed
    if run_dir is not None:
        config[RUN_RELATIVE] = _relative(config, Path(run_dir).expanduser().resolve())
    return config


def _recorded(config: dict) -> dict:
    """``{"backbone" | ... | "data.train" | ...: absolute path}`` of ``config``."""
    found = {n: config.get(n) for n in PATH_SETTINGS}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    found.update({f"data.{split}": data.get(split) for split in _SPLITS})
    return {k: v for k, v in found.items() if isinstance(v, str) and os.path.isabs(v)}


def _relative(config: dict, run_dir: Path) -> dict:
    relative = {}
    for key, value in _recorded(config).items():
        try:
            relative[key] = Path(os.path.relpath(value, run_dir)).as_posix()
        except ValueError:  # another drive (Windows): no relative path exists
            continue
    return relative


def located(config: dict, run_dir: str | os.PathLike) -> dict:
    """``config`` (a run's ``config.yaml``) with every recorded path that no longer
    exists replaced by its run-relative one where that exists (the run folder moved
    together with its data), in place."""
    relative = config.get(RUN_RELATIVE)
    if not isinstance(relative, dict):
        return config
    base = Path(run_dir).expanduser().resolve()
    for key, value in _recorded(config).items():
        moved = relative.get(key)
        if not isinstance(moved, str) or Path(value).exists():
            continue
        candidate = (base / moved).resolve()
        if not candidate.exists():
            continue
        if key.startswith("data."):
            config["data"][key.split(".", 1)[1]] = str(candidate)
        else:
            config[key] = str(candidate)
    return config


def saved_sources(path) -> dict:
    """The data sources a run's ``config.yaml`` records (``{"train", "val", "test"}``,
    absolute), or ``{}`` for a config file without them."""
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).expanduser().read_text("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}  # read_settings reports an unreadable file
    data = loaded.get("data") if isinstance(loaded, dict) else None
    if not isinstance(data, dict):
        return {}
    return {k: v for k in ("train", "val", "test") if isinstance(v := data.get(k), str)}

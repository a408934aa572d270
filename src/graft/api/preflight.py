"""Checks that need no model, made before TensorFlow is imported: a mistake in the
settings, a misspelled backbone, a missing data folder or a run folder that would be
overwritten costs well under a second, not the ten of importing TensorFlow first."""

from __future__ import annotations

import os
from pathlib import Path

from graft.config.catalog import CATALOG
from graft.config.names import AUTO_STRATEGY
from graft.config.settings import TrainConfig
from graft.errors import DataError, GraftError, UnknownNameError, did_you_mean
from graft.runs import files

#: Endings of a model file (``--backbone path.keras``), as ``graft.core.loaders`` reads them.
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def check_train(
    data=None,
    backbone=None,
    out=None,
    *,
    val=None,
    test=None,
    overwrite: bool = False,
    settings: dict | None = None,
) -> None:
    """Raise the first error :func:`graft.train` would meet before building anything.

    Args:
        data, val, test: Data sources; only paths are checked (arrays pass).
        backbone: A registry name or a model path (a ``keras.Model`` passes).
        out: The run folder: an existing non-empty one needs ``overwrite``.
        overwrite: As for :func:`graft.train`.
        settings: :class:`~graft.config.TrainConfig` fields, validated as the run would.
    """
    if isinstance(backbone, (str, os.PathLike)):
        settings = dict(settings or {})
        if settings.get("strategy") == AUTO_STRATEGY:  # the search picks it (graft.api.auto)
            settings.pop("strategy")
        TrainConfig(backbone=str(backbone), **settings)
        check_backbone(str(backbone))
    check_cut(settings or {})
    for name, source in (("DATA", data), ("--val", val), ("--test", test)):
        check_source(source, name)
    if out is not None:
        path = Path(out).expanduser()
        if path.exists() and not path.is_dir():
            raise GraftError(f"out={out} exists and is not a folder.")
        if path.is_dir():
            files.check_reusable(path, overwrite, out)


def check_cut(settings: dict) -> None:
    """``cut="auto"`` measures every layer with the pre-trained weights: with
    ``weights="none"`` there is nothing to measure (said before TensorFlow is imported,
    as :func:`graft.api.pipeline.cut_by_measurement` would say it)."""
    weights = settings.get("weights")
    if settings.get("cut") == "auto" and weights is not None and str(weights).lower() == "none":
        raise GraftError(
            "cut='auto' measures each layer on your labelled images with the pre-trained "
            "weights; weights=none leaves them random. Received: cut=auto, weights=none",
            hint="give --cut LAYER, or drop --weights none.",
        )


def check_backbone(name: str) -> None:
    """A registry name must be known; a model file must exist."""
    path = Path(name).expanduser()
    if name.endswith(MODEL_SUFFIXES):
        if not path.exists():
            raise GraftError(
                f"Backbone file not found: {name}.",
                hint="pass an existing .keras/.h5 file, or a registry name ('graft backbones').",
            )
        return
    if os.sep in name or "/" in name or path.exists():
        return  # a folder (KerasHub preset) or a path: its loader checks it
    key = name.lower().replace("-", "_")
    if key not in CATALOG:
        raise UnknownNameError(
            f"Unknown backbone: {name!r}." + did_you_mean(key, CATALOG),
            hint="run 'graft backbones' for the list, or pass the path of a .keras/.h5 model.",
        )


def check_source(source, name: str = "DATA") -> None:
    """A data path (folder or ``.csv``) must exist."""
    if not isinstance(source, (str, os.PathLike)) or "://" in str(source):
        return  # arrays, datasets; a URL-like source is its reader's to check
    if not Path(source).expanduser().exists():
        kind = "CSV manifest" if str(source).lower().endswith(".csv") else "Data folder"
        raise DataError(
            f"{kind} not found for {name}: {source}.",
            hint="pass a folder with one subfolder of images per class, or a .csv manifest.",
        )


#: Where ``graft train`` puts a run given no ``--out``: ``runs/train-1``, ``runs/train-2``...
DEFAULT_RUNS = Path("runs")


def default_out(root: str | os.PathLike = DEFAULT_RUNS, prefix: str = "train") -> Path:
    """The next free numbered run folder, ``ROOT/PREFIX-N`` (one more than the highest N
    there, as Ultralytics numbers its runs; never an existing folder)."""
    root = Path(root)
    taken = [0]
    if root.is_dir():
        for entry in root.iterdir():
            number = entry.name.removeprefix(f"{prefix}-")
            if entry.name.startswith(f"{prefix}-") and number.isdigit():
                taken.append(int(number))
    return root / f"{prefix}-{max(taken) + 1}"

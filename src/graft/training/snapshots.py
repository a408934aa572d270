"""The arrays of a checkpoint (:mod:`graft.training.checkpoints`): ``.npz`` files written
atomically and read without pickle, and the model's weights written once in full per
phase and then, every epoch, only the variables that training can change.

Inside a phase only the variables of trainable layers change (weights, BatchNorm
statistics) and the random states of the seed generators; the weights of frozen layers
cannot change (a frozen BatchNormalization runs in inference mode). So the first
checkpoint of a phase writes every variable of the model (the phase's *base*), and every
later epoch writes only the changing ones, by their index in ``model.variables``: a few
hundred KB for a head on a backbone of millions of parameters, instead of all of them.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import keras
import numpy as np

from graft.core import keras_compat
from graft.errors import GraftError
from graft.runs import files as runs


def save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    """Every array of the list, in order (uncompressed ``.npz``)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{f"v{i:05d}": a for i, a in enumerate(arrays)})
    runs.atomic_write(path, buffer.getvalue())


def save_indexed(path: Path, arrays: dict[int, np.ndarray]) -> None:
    """Some arrays of a list, each under its index in the list."""
    buffer = io.BytesIO()
    np.savez(buffer, **{f"v{i:05d}": a for i, a in arrays.items()})
    runs.atomic_write(path, buffer.getvalue())


def load_indexed(path: Path) -> dict[int, np.ndarray]:
    """The arrays of a checkpoint file by index; a damaged file (truncated, another
    format, a compressed member graft never writes) is one clear :class:`GraftError`."""
    try:
        with zipfile.ZipFile(path) as archive:  # sizes checked before anything is read
            packed = [m.filename for m in archive.infolist() if m.compress_type]
        if packed:
            raise ValueError(f"compressed member {packed[0]!r} (graft writes them stored)")
        with np.load(path, allow_pickle=False) as data:
            return {int(k[1:]): data[k] for k in data.files}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        text = str(exc).strip().splitlines()
        raise GraftError(
            f"The checkpoint file {path} is damaged: {text[0] if text else type(exc).__name__}.",
            hint="start a new run with another out=DIR (or put the checkpoint back as it was).",
        ) from None


def load_arrays(path: Path) -> list[np.ndarray]:
    indexed = load_indexed(path)
    return [indexed[i] for i in sorted(indexed)]


def assign(variables, arrays, what: str, path: Path) -> None:
    if len(variables) != len(arrays) or any(
        tuple(v.shape) != a.shape for v, a in zip(variables, arrays)
    ):
        raise GraftError(
            f"The checkpoint {path} does not fit this {what} "
            f"({len(arrays)} saved arrays for {len(variables)} variables).",
            hint="resume with the same graft version and settings, or start a new run.",
        )
    for variable, value in zip(variables, arrays):
        variable.assign(value)


def changing(model: keras.Model) -> list[int]:
    """Indices in ``model.variables`` of the variables a fit of the current trainability
    can change: all but the weights of frozen layers without sublayers (a frozen
    container may hold a trainable layer, whose variables then count as changing)."""
    frozen: set[int] = set()
    for layer in keras_compat.sublayers(model):
        leaf = not keras_compat.sublayers(layer, recursive=False)
        if leaf and not layer.trainable:
            frozen.update(id(w) for w in layer.weights)  # not seed-generator states
    return [i for i, v in enumerate(model.variables) if id(v) not in frozen]


def model_arrays(model: keras.Model, indices: list[int] | None = None) -> dict[int, np.ndarray]:
    """The values of ``model.variables`` (only ``indices`` if given), by index."""
    variables = model.variables
    chosen = range(len(variables)) if indices is None else indices
    return {i: np.asarray(variables[i]) for i in chosen}


def restore(model: keras.Model, folder: Path, weights: str, base: str | None) -> None:
    """Put ``weights`` (completed by the full snapshot ``base`` if given) into ``model``."""
    arrays = load_indexed(folder / weights)
    if base is not None:
        arrays = {**load_indexed(folder / base), **arrays}
    count = len(model.variables)
    if sorted(arrays) != list(range(count)):
        raise GraftError(
            f"The checkpoint {folder / weights} does not fit this model "
            f"({len(arrays)} saved arrays for {count} variables).",
            hint="resume with the same graft version and settings, or start a new run.",
        )
    assign(model.variables, [arrays[i] for i in range(count)], "model", folder / weights)

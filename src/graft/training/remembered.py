"""Measured input decisions remembered across runs: iterating on a head costs no new
measurement.

:func:`graft.training.candidates.choose_inputs` (the input scaling and pooling chosen by
the cross-validated probe) costs a forward pass of the backbone over the labelled images
and a probe per candidate: on a CPU, several times what training a head on cached
features costs. Yet its answer depends only on what it measured, never on the head's
settings (hidden units, dropout, learning rate, epochs): a second run on the same images
with other head settings would measure the same thing again.

A decision is remembered in the cache root's ``measurements`` folder (``graft cache``
lists and clears it like the feature cache), one JSON file per key. The key is
everything the measurement depends on: the backbone's source, input and output shapes and
a fingerprint of all its weights, the exact content of the measured images (file
contents or the array) and their labels, in order, the folds' every split, what the user
gave (scaling, pooling) or the evidence decided, the number of classes, the candidates'
grid and :data:`VERSION` of the measurement's code. A changed file, label, split, weight
or setting measures again; an unreadable or mismatching file too (never an error).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from graft.runs import files
from graft.training import cache
from graft.training.candidates import MAX_FLATTEN, Candidate, InputChoice
from graft.training.probe import C_GRID, CVScore

#: Version of what a remembered decision means (a new one orphans every entry): bump it
#: when :func:`graft.training.candidates.choose_inputs` decides differently.
VERSION = 1
#: The cache root's subfolder of remembered decisions.
KIND = "measurements"


def directory(cache_dir=None) -> Path:
    """Where decisions are remembered: ``<cache root>/measurements`` (the root is the
    run's ``cache_dir`` when given, as for the activation cache)."""
    root = Path(cache_dir) if cache_dir else cache.default_dir().parent
    return root / KIND


def inputs_key(backbone, split, limit: int, folds, settings: dict) -> str:
    """The key of the input decision measured on the first ``limit`` images of ``split``
    (a files or arrays :class:`graft.data.adapter.DataAdapter`) with ``folds`` by
    ``backbone`` (a :class:`graft.backbones.Backbone`); ``settings``: what else the
    measurement was given (JSON-able)."""
    from graft.core.model_utils import weights_fingerprint

    if split.images is not None:
        content = cache.content_fingerprint(images=split.images[:limit])
    else:
        content = cache.content_fingerprint(paths=split.paths[:limit])
    labels = np.ascontiguousarray(np.asarray(split.labels)[:limit])
    splits = hashlib.blake2b(digest_size=16)
    for part in () if folds is None else folds.splits:
        for index in part:
            splits.update(np.ascontiguousarray(index, dtype="int64").tobytes() + b";")
    model = backbone.model
    description = {
        "kind": "inputs",
        "version": VERSION,
        "source": str(backbone.source),
        # an any-size model (KerasHub presets: (None, None, 3)) is measured at image_size
        "input": [None if d is None else int(d) for d in model.input_shape[1:]],
        "image_size": [int(d) for d in backbone.image_size],
        "output": [None if d is None else int(d) for d in model.output_shape[1:]],
        "weights": weights_fingerprint(model),
        "content": content,
        "labels": hashlib.blake2b(labels.astype("int64").tobytes(), digest_size=16).hexdigest(),
        "folds": None if folds is None else [folds.kind, len(folds.splits), splits.hexdigest()],
        "grid": list(C_GRID),
        "max_flatten": MAX_FLATTEN,
        "settings": settings,
    }
    return cache.digest(description)


def choice_to_dict(choice: InputChoice) -> dict:
    """Every field of ``choice``, scores unrounded (``as_dict`` rounds them for reading)."""

    def score(s: CVScore | None):
        if s is None:
            return None
        return {"mean": s.mean, "std": s.std, "scores": list(s.scores), "log_loss": s.log_loss}

    return {
        "scaling": choice.scaling,
        "pool": choice.pool,
        "features": choice.features,
        "candidates": [
            {
                "scaling": c.scaling,
                "pool": c.pool,
                "features": c.features,
                "score": score(c.score),
                "C": c.C,
            }
            for c in choice.candidates
        ],
        "evidence": choice.evidence,
        "how": dict(choice.how),
        "protocol": choice.protocol,
        "forward_passes": choice.forward_passes,
    }


def choice_from_dict(record: dict) -> InputChoice:
    """The :class:`InputChoice` :func:`choice_to_dict` wrote."""

    def score(s):
        if s is None:
            return None
        return CVScore(
            float(s["mean"]),
            float(s["std"]),
            tuple(float(v) for v in s["scores"]),
            float(s["log_loss"]),
        )

    candidates = tuple(
        Candidate(c["scaling"], c["pool"], int(c["features"]), score(c["score"]), c["C"])
        for c in record["candidates"]
    )
    return InputChoice(
        str(record["scaling"]),
        str(record["pool"]),
        int(record["features"]),
        candidates,
        record["evidence"],
        dict(record["how"]),
        str(record["protocol"]),
        int(record["forward_passes"]),
    )


def recall(key: str, folder: Path) -> tuple[InputChoice, float] | None:
    """``(decision, seconds its measurement took)`` remembered under ``key`` (``None``:
    none, or unreadable)."""
    path = folder / f"{key}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("key") != key or record.get("version") != VERSION:
            return None
        return choice_from_dict(record["choice"]), float(record.get("seconds", 0.0))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(key: str, folder: Path, choice: InputChoice, seconds: float) -> None:
    """Write the decision under ``key`` (atomically; a read-only or full disk only costs
    the next run a measurement)."""
    record = {"key": key, "version": VERSION, "seconds": round(seconds, 3)}
    record["choice"] = choice_to_dict(choice)
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        files.atomic_write(folder / f"{key}.json", json.dumps(record, sort_keys=True))


def remembered_inputs(
    key: str, folder: Path, measure: Callable[[], InputChoice]
) -> tuple[InputChoice, float | None]:
    """``(choice, seconds the earlier measurement took)`` when ``key`` is remembered in
    ``folder``, else ``(measure(), None)``, remembered for the next run."""
    found = recall(key, folder)
    if found is not None:
        return found
    start = time.perf_counter()
    choice = measure()
    remember(key, folder, choice, time.perf_counter() - start)
    return choice, None

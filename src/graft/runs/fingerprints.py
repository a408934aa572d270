"""What a run started with: its data, backbone and settings, as fingerprints.

The checkpointer stores them in ``checkpoint/state.json``; a resumed run computes them
again and refuses to continue when they differ, saying what changed (a class whose files
changed, another backbone, a setting edited in ``config.yaml``).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from graft.config import paths
from graft.data import content


def weights_digest(model) -> str:
    """A digest of every weight of ``model``: :func:`graft.core.model_utils.weights_fingerprint`."""
    from graft.core.model_utils import weights_fingerprint  # keras only when asked

    return weights_fingerprint(model)


#: The fingerprints' format: 2 fingerprints data by file content and paths by what they
#: hold (1, before: data by file path and size, paths by their spelling).
FORMAT = 2


def data_digest(split) -> dict | None:
    """Per class: how many items, and a digest of their contents (file bytes, or pixels).

    File paths are no part of it: data moved or spelled another way (relative on start,
    absolute on resume) is the same data; a file whose bytes changed is not.
    ``split`` is a :class:`graft.data.adapter.DataAdapter` (its ``kind`` says what it
    holds), or ``None``; a streamed dataset is not fingerprinted.
    """
    if split is None or split.kind == "dataset":
        return None
    if split.kind == "arrays":
        x, y = (np.ascontiguousarray(a) for a in (split.images, split.labels))
        digest = hashlib.blake2b(x.tobytes() + y.tobytes(), digest_size=16).hexdigest()
        return {"arrays": f"{x.shape}:{digest}"}
    files = split.files
    labels = np.asarray(files.labels)
    contents = [content.file_digest(p) for p in files.paths]
    result = {}
    for index, name in enumerate(files.classes):
        carries = labels[:, index] > 0 if labels.ndim == 2 else labels == index
        items = sorted(d for d, keep in zip(contents, carries) if keep)
        digest = hashlib.blake2b("\n".join(items).encode(), digest_size=16)
        result[str(name)] = f"{len(items)} files:{digest.hexdigest()}"
    return result


def settings_digest(settings: dict) -> dict:
    """``settings`` as a fingerprint: a path setting that names a file or folder (the
    backbone file, a weights file, the cache folder) reads ``"<path>"``, since its
    contents are fingerprinted apart (the backbone's weights) or do not change results."""
    shown = {}
    for name, value in settings.items():
        kind = paths.PATH_SETTINGS.get(name)
        shown[name] = "<path>" if kind and paths.absolute(value, kind) else value
    return plain(shown)


def source_digest(source) -> str | None:
    """A backbone's source: a registry name as it is, a file as ``"<file>"`` (its weights
    are fingerprinted apart)."""
    if source is None:
        return None
    return "<file>" if os.path.isabs(str(source)) else str(source)


def plain(value):
    """``value`` as it reads back from JSON (tuples become lists, ...)."""
    return json.loads(json.dumps(value, default=str))


def differences(saved: dict, now: dict) -> list[str]:
    """What changed between two fingerprints (``[]``: nothing), one phrase per change."""
    changes = []
    for part in sorted(set(saved) | set(now)):
        before, after = saved.get(part), now.get(part)
        if before == after or before is None:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            keys = sorted(set(before) | set(after), key=str)
            changed = [k for k in keys if before.get(k) != after.get(k)]
            if part == "settings":
                leaves = [c for k in changed for c in _leaves(str(k), before.get(k), after.get(k))]
                shown = [f"{k} {b!r} -> {a!r}" for k, b, a in leaves[:4]]
                changed = leaves
            else:
                shown = [f"'{k}'" for k in changed[:4]]
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            changes.append(f"{part} ({', '.join(shown)}{more})")
        else:
            changes.append(part)
    return changes


def _leaves(key: str, before, after) -> list[tuple[str, object, object]]:
    """The changed values under ``key``, one per leaf (``phases[1].epochs 2 -> 3``, not
    both whole phase lists)."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after), key=str)
        return [
            leaf
            for k in keys
            if before.get(k) != after.get(k)
            for leaf in _leaves(f"{key}.{k}", before.get(k), after.get(k))
        ]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            leaf
            for i, (b, a) in enumerate(zip(before, after), start=1)
            if b != a
            for leaf in _leaves(f"{key}[{i}]", b, a)
        ]
    return [(key, before, after)]

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


def weights_digest(model) -> str:
    """A digest of every weight of ``model``: :func:`graft.core.model_utils.weights_fingerprint`."""
    from graft.core.model_utils import weights_fingerprint  # keras only when asked

    return weights_fingerprint(model)


def _file_item(path: str) -> str:
    try:
        size = os.stat(path).st_size
    except OSError:
        size = -1
    return f"{path}\0{size}\n"


def data_digest(split) -> dict | None:
    """Per class: how many items, and a digest of them (file paths and sizes, or pixels).

    ``split`` is a :class:`graft.data.sources.LabelledFiles`, an ``(x, y)`` tuple, or
    ``None``/a dataset (not fingerprinted).
    """
    if split is None:
        return None
    if isinstance(split, tuple):
        x, y = (np.ascontiguousarray(a) for a in split)
        digest = hashlib.blake2b(x.tobytes() + y.tobytes(), digest_size=16).hexdigest()
        return {"arrays": f"{x.shape}:{digest}"}
    if not hasattr(split, "paths"):
        return None
    labels = np.asarray(split.labels)
    result = {}
    for index, name in enumerate(split.classes):
        carries = labels[:, index] > 0 if labels.ndim == 2 else labels == index
        items = sorted(_file_item(p) for p, keep in zip(split.paths, carries) if keep)
        digest = hashlib.blake2b("".join(items).encode("utf-8", "surrogateescape"), digest_size=16)
        result[str(name)] = f"{len(items)} files:{digest.hexdigest()}"
    return result


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
                shown = [f"{k} {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:4]]
            else:
                shown = [f"'{k}'" for k in changed[:4]]
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            changes.append(f"{part} ({', '.join(shown)}{more})")
        else:
            changes.append(part)
    return changes

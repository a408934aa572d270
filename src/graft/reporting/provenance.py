"""Where each setting graft had to decide came from, for the report.

``config.yaml`` keeps the settings as the user gave them (``None``: not given) and, under
``resolved_backbone``, what the run used; ``metrics.json`` keeps what was measured (the
learning-rate finder, the head's input). :func:`inferred_settings` pairs them up into
rows ``(setting, value used, where it came from)``, so the report shows
``preprocess: symmetric — measured: the first BatchNormalization 'bn' ...`` instead of a
blank ``preprocess: null``.
"""

from __future__ import annotations

GIVEN = "given"
MODEL = "model evidence"
MEASURED = "measured"
DEFAULT = "registry default"
#: What a setting's default is where no registry row gives one.
GRAFT_DEFAULT = "graft default"


def _size(value) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return str(value)


def _is_file(config: dict, resolved: dict) -> bool:
    """Whether the backbone is a model file (its own weights), not a registry name."""
    return str(resolved.get("weights")) == str(resolved.get("source"))


def _weights(config: dict, resolved: dict) -> tuple:
    if config.get("weights") is not None:
        return ("weights", config["weights"], GIVEN, "")
    if _is_file(config, resolved):
        return ("weights", "the model file's own", MODEL, "the weights saved in the file")
    return ("weights", resolved.get("weights", "?"), DEFAULT, "")


def _image_size(config: dict, resolved: dict) -> tuple:
    value = _size(resolved.get("image_size", config.get("image_size")))
    if config.get("image_size") is not None:
        return ("image size", value, GIVEN, "")
    if _is_file(config, resolved):
        return ("image size", value, MODEL, "the model's input shape")
    return ("image size", value, DEFAULT, "the architecture's input size")


def _preprocess(config: dict, resolved: dict) -> tuple:
    value = resolved.get("preprocess", "?")
    evidence = resolved.get("preprocess_evidence") or {}
    if config.get("preprocess") is not None:
        note = ""
        if evidence.get("choice") and evidence["choice"] != config["preprocess"]:
            note = f"the model's statistics point to {evidence['choice']} instead"
        return ("preprocess", value, GIVEN, note)
    if evidence.get("choice"):
        return ("preprocess", value, MEASURED, f"matched on {evidence.get('source', '?')}")
    if evidence:
        why = evidence.get("source", "no evidence")
        return ("preprocess", value, GRAFT_DEFAULT, f"not inferred: {why}")
    if _is_file(config, resolved):
        return ("preprocess", value, GRAFT_DEFAULT, "no pre-trained statistics to match")
    return ("preprocess", value, DEFAULT, "the architecture's own preprocessing")


def _pool(config: dict, metrics: dict) -> tuple | None:
    head_input = metrics.get("head_input")
    pool = config.get("pool")
    if head_input is None and pool is None:
        return None
    value = head_input or pool
    if pool not in (None, "auto"):
        return ("pool", value, GIVEN, "")
    return ("pool", value, GRAFT_DEFAULT, "auto: chosen from the backbone output's shape")


def _lr(config: dict, metrics: dict) -> tuple | None:
    found = metrics.get("lr_find")
    if not found:
        return None
    steps = found.get("steps") if isinstance(found, dict) else None
    note = "learning-rate finder" + (f", {steps} steps" if steps else "")
    return ("learning rate", config.get("lr"), MEASURED, note)


def inferred_settings(config: dict, metrics: dict) -> list[tuple]:
    """Rows ``(setting, value used, source, note)`` for the settings graft resolved:
    ``source`` is :data:`GIVEN`, :data:`MODEL`, :data:`MEASURED`, :data:`DEFAULT` or
    :data:`GRAFT_DEFAULT`; ``note`` says how (may be empty)."""
    resolved = config.get("resolved_backbone") or {}
    if not resolved:
        return []
    rows = [
        ("backbone", resolved.get("source", config.get("backbone")), GIVEN, ""),
        _weights(config, resolved),
        _image_size(config, resolved),
        (
            "channels",
            resolved.get("channels"),
            MODEL if _is_file(config, resolved) else DEFAULT,
            "",
        ),
        _preprocess(config, resolved),
        _pool(config, metrics),
        _lr(config, metrics),
    ]
    return [row for row in rows if row is not None and row[1] is not None]

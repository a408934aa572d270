"""Per-field metadata of settings: help, group, choices and command-line flag.

``setting(default, group, help, ...)`` is a :func:`dataclasses.field` whose metadata
the CLI reads to generate its options; the library reads only the defaults.
"""

from __future__ import annotations

import dataclasses

#: Groups of settings, in the order ``graft train --help`` shows them.
GROUPS = ("model", "strategy", "optimisation", "data", "speed", "run")

_UNSET = object()


def setting(
    default,
    group: str,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    flag: str | None | object = _UNSET,
    short: str | None = None,
    metavar: str | None = None,
    path: str | None = None,
):
    """A dataclass field with its metadata.

    Args:
        default: The default value (a tuple default is copied per instance).
        group: One of :data:`GROUPS`.
        help: One line for ``--help``.
        choices: The accepted names, if the setting is an enumeration.
        flag: The command-line flag; default ``--name-with-dashes``; ``None``: no flag.
        short: A short flag such as ``-b``.
        metavar: The placeholder shown in ``--help``.
        path: ``"always"``: the value is a file or folder path; ``"existing"``: it is a
            path when one exists (else a name). Saved absolute in ``config.yaml``
            (:mod:`graft.config.paths`).
    """
    if group not in GROUPS:
        raise ValueError(f"Unknown group: {group!r}. Expected one of {', '.join(GROUPS)}.")
    metadata = {
        "help": help,
        "group": group,
        "choices": tuple(choices) if choices else None,
        "flag": flag,
        "short": short,
        "metavar": metavar,
        "path": path,
    }
    return dataclasses.field(default=default, metadata=metadata)


def flag(field: dataclasses.Field) -> str | None:
    """The flag of a field (``finetune_lr`` -> ``--finetune-lr``), or ``None``."""
    given = field.metadata.get("flag", _UNSET)
    if given is _UNSET:
        return "--" + field.name.replace("_", "-")
    return given


def flags(config_class) -> dict[str, str]:
    """``{argument name: flag}`` of every field of a settings dataclass that has a flag."""
    return {f.name: name for f in dataclasses.fields(config_class) if (name := flag(f)) is not None}

"""Command-line options generated from :class:`~graft.config.TrainConfig`'s metadata.

Every setting has one flag, one help line, one default and (for enumerations) one
``click.Choice``, all declared next to the field; nothing here repeats them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

import click

from graft.cli.base import SettingOption
from graft.config import fields
from graft.config.settings import TrainConfig
from graft.errors import GraftError

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
#: ``{argument: flag}`` of every setting, and of the API arguments the CLI exposes.
FLAGS = {
    **fields.flags(TrainConfig),
    "budget_trials": "--budget-trials",
    "seeds": "--seeds",
    "source_eval": "--source-eval",
    "source_model": "--source-model",
}


def units(text: str | tuple) -> tuple[int, ...]:
    """``"128,64"`` -> ``(128, 64)``; ``""`` -> ``()`` (a linear head)."""
    if isinstance(text, tuple):
        return text
    try:
        return tuple(int(t) for t in str(text).replace(" ", "").split(",") if t)
    except ValueError:
        raise GraftError(
            f"head must be comma-separated integers. Received: head={text!r}"
        ) from None


def learning_rate(value):
    """A number, or ``"auto"`` (the LR finder)."""
    if value is None or isinstance(value, float) or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise GraftError(f"lr must be a number or 'auto'. Received: lr={value!r}") from None


def number_or_auto(name: str, kind: type):
    """A click callback: ``"auto"`` or a number of ``kind`` (one clear error otherwise)."""

    def parse(ctx, param, value):
        if value is None or value == "auto" or isinstance(value, kind):
            return value
        try:
            return kind(value)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise GraftError(
                f"{name} must be {expected} or 'auto'. Received: {name}={value!r}"
            ) from None

    return parse


_CALLBACKS = {
    "head": lambda ctx, param, value: units(value),
    "lr": lambda ctx, param, value: learning_rate(value),
    "epochs": number_or_auto("epochs", int),
    "finetune_epochs": number_or_auto("finetune_epochs", int),
    "val_split": number_or_auto("val_split", float),
}


def _option(field: dataclasses.Field, **overrides):
    """The click option of a setting (a decorator)."""
    meta = field.metadata
    flag = fields.flag(field)
    decls = [flag, *([meta["short"]] if meta.get("short") else []), field.name]
    # Annotations are strings here (``from __future__ import annotations``): "int | None".
    base = str(field.type).split("|")[0].strip()
    kwargs = {
        "default": field.default,
        "help": meta["help"],
        "metavar": meta.get("metavar"),
        "group": meta["group"],
        "show_default": field.default is not None and field.default is not False,
    }
    if base == "bool":
        if field.default:
            decls[0] = f"{flag}/--no-{flag[2:]}"
        else:
            kwargs.update(is_flag=True, show_default=False)
    elif meta.get("choices"):
        kwargs["type"] = click.Choice(meta["choices"])
    elif field.name in _CALLBACKS:
        kwargs["callback"] = _CALLBACKS[field.name]
        # The default is shown in --help as typed on the command line, then parsed by the
        # callback like any given value (so "--head 128,64" and the default agree).
        if field.name == "head":
            kwargs["default"] = ",".join(map(str, field.default))
        elif isinstance(field.default, str):
            kwargs["default"] = field.default
        else:
            kwargs["default"] = f"{field.default:g}"
    else:
        kwargs["type"] = _TYPES.get(base, str)
    kwargs.update(overrides)
    return click.option(*decls, cls=SettingOption, **kwargs)


def settings(names: Iterable[str] | None = None, *, groups: Iterable[str] = (), **overrides: dict):
    """A decorator adding the options of some settings to a command.

    Args:
        names: Settings to add (default: every setting with a flag, unless ``groups``).
        groups: Add every setting of these groups too.
        **overrides: ``{setting: {click keyword: value}}``, e.g. ``backbone={"required": True}``.
    """
    chosen = set(names or ())
    groups = set(groups)
    everything = names is None and not groups

    def wanted(f: dataclasses.Field) -> bool:
        return fields.flag(f) is not None and (
            everything or f.name in chosen or f.metadata["group"] in groups
        )

    def decorate(command):
        # click lists options in the reverse order decorators are applied: reversed, --help
        # shows them in the order the settings are declared.
        for f in reversed([f for f in dataclasses.fields(TrainConfig) if wanted(f)]):
            command = _option(f, **overrides.get(f.name, {}))(command)
        return command

    return decorate


def command_flags(group: click.Group) -> dict[str, str]:
    """``{python argument: --flag}`` of every option of every command under ``group``,
    derived from the commands themselves (``safe_mode=False`` is ``--unsafe``)."""
    table = {"safe_mode=False": "--unsafe"}
    for command in group.commands.values():
        if isinstance(command, click.Group):
            table = {**command_flags(command), **table}
            continue
        for param in command.params:
            long = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
            if not (isinstance(param, click.Option) and long):
                continue
            if param.is_flag:  # overwrite=True -> --overwrite
                table.setdefault(f"{param.name}=True", long[0])
            else:
                table.setdefault(param.name, long[0])
    return table


def to_flags(message: str, flags: dict[str, str] | None = None) -> str:
    """Name command-line flags where a library message names Python arguments:
    ``Received: finetune_lr=-1`` -> ``Received: --finetune-lr -1``, ``overwrite=True``
    -> ``--overwrite``. Messages about a plan file's phases keep their field names."""
    if ": phase " in message:  # a plan file's field (lr) is not the --lr flag
        return message
    table = FLAGS if flags is None else flags
    for name, flag in table.items():
        if "=" in name:
            message = re.sub(rf"(?<![\w.-]){re.escape(name)}(?!\w)", flag, message)
            continue
        message = re.sub(rf"(?<![\w.-]){name}=", f"{flag} ", message)
        message = re.sub(rf"^{name} (must|needs)\b", rf"{flag} \1", message)
    return message

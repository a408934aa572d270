"""Plans as data: custom YAML plans, run-wide options applied to named strategies, and
the resolved plan as a table (``graft train --print-plan``).

A plan file is a YAML list of phases; every key is a :class:`~graft.config.phase.Phase`
field::

    - name: probe
      trainable: none
      epochs: 20
      lr: 1.0e-3
      head: []            # a linear probe (first phase only)
      early_stop: 3
    - name: finetune
      trainable: blocks:4
      epochs: 10
      lr: 1.0e-4
      backbone_lr: 1.0e-5
      layer_decay: 0.75
      schedule: cosine
      warmup_epochs: 1
      l2sp: 0.01
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from graft.config.phase import Phase
from graft.errors import GraftError, first_line, unknown_keys

#: Run-wide options (``--lr-mult``, ``--schedule`` ...) copied into every phase of a
#: named strategy. ``recalibrate_bn`` only goes to the first phase.
PHASE_OPTIONS = (
    "lr_mult",
    "layer_decay",
    "schedule",
    "warmup_epochs",
    "early_stop",
    "weight_decay",
    "l2sp",
)


def load(path: str | os.PathLike) -> list[Phase]:
    """Read a plan file (a YAML list of phase mappings).

    Args:
        path: The ``.yaml`` file.

    Returns:
        The phases, validated.

    Raises:
        GraftError: One line naming the file and what is wrong with it.
    """
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise GraftError(f"No plan file at {path}.", hint="pass a YAML list of phases.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GraftError(f"{path} is not valid YAML: {first_line(exc)}") from None
    if not isinstance(data, list) or not data:
        raise GraftError(f"{path} must be a non-empty YAML list of phases (mappings).")
    phases = []
    for i, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise GraftError(f"{path}: phase {i} must be a mapping of phase fields.")
        item = {"name": f"phase_{i}", **item}
        try:
            phases.append(Phase.from_dict(item))
        except TypeError as exc:  # wrong value types reaching the dataclass
            raise GraftError(f"{path}: phase {i}: {exc}") from None
        except GraftError as exc:
            raise type(exc)(f"{path}: phase {i}: {exc.message}", hint=exc.hint) from None
    return phases


def with_options(
    phases: list[Phase], recalibrate_bn: bool = False, precise_bn: bool = True, **options
) -> list[Phase]:
    """Copy run-wide options into every phase (``None`` values are left alone).

    Args:
        phases: A strategy's phases.
        recalibrate_bn: Recalibrate BN before the first phase.
        precise_bn: ``False`` turns precise BN off in every phase (``True`` leaves each
            phase's own choice: on where BN trains).
        **options: Any of :data:`PHASE_OPTIONS`.

    Returns:
        New phases; per-block rates and L2-SP matter only where the backbone trains.
    """
    unknown_keys(options, PHASE_OPTIONS, what="phase option")
    given = {k: v for k, v in options.items() if v is not None}
    out = []
    for p in phases:
        fields = dict(given)
        if "warmup_epochs" in fields:  # a short phase warms up for fewer epochs
            fields["warmup_epochs"] = min(int(fields["warmup_epochs"]), p.epochs - 1)
        out.append(dataclasses.replace(p, **fields))
    if not precise_bn:
        out = [dataclasses.replace(p, precise_bn=False) for p in out]
    if recalibrate_bn and out:
        out[0] = dataclasses.replace(out[0], recalibrate_bn=True)
    return out


def rows(phases: list[Phase]) -> list[dict]:
    """One row of printable text per phase (the ``--print-plan`` table)."""
    table = []
    for i, p in enumerate(phases, start=1):
        if p.backbone_frozen:
            backbone_lr = "-"
        elif p.layer_decay is not None:
            backbone_lr = f"{p.lr:g} x {p.layer_decay:g}^i"
        else:
            backbone_lr = f"{p.backbone_lr or p.lr:g}"
            if p.lr_mult is not None:
                backbone_lr += f" x {p.lr_mult:g}^d"
        extras = [f"weight_decay {p.weight_decay:g}"] if p.weight_decay else []
        if p.l2sp and not p.backbone_frozen:
            extras.append(f"l2sp {p.l2sp:g}")
        if p.early_stop:
            extras.append(f"early_stop {p.early_stop}")
        if p.recalibrate_bn:
            extras.append("recalibrate BN")
        if p.uses_precise_bn:
            extras.append("precise BN")
        if p.head is not None:
            extras.append(f"head {list(p.head) or 'linear'}")
        schedule = p.schedule + (f" (+{p.warmup_epochs} warmup)" if p.warmup_epochs else "")
        table.append(
            {
                "#": str(i),
                "phase": p.name,
                "trainable": p.trainable,
                "epochs": str(p.epochs),
                "lr": f"{p.lr:g}",
                "backbone lr": backbone_lr,
                "schedule": schedule,
                "optimizer": p.optimizer,
                "BN": "trains" if p.train_bn else "frozen",
                "extras": ", ".join(extras) or "-",
            }
        )
    return table

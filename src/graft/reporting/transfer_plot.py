"""The transferability curve: probe accuracy (± std) against depth, one line per pooling.

Drawn from :meth:`graft.training.transfer.TransferResult.as_dict` (as written to
``metrics/probe.json`` or ``metrics.json``), so a report can redraw it from the run folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from graft.reporting.plots import figure, save

CURVE = "transferability.png"


def transferability_curve(record: dict, path: str | os.PathLike) -> Path:
    """Draw the curve of ``record`` (a ``TransferResult.as_dict()``) into ``path`` (PNG).

    Layer names are taken literally (no mathtext), as every plot of the run's."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        return _draw(record, path)


def _draw(record: dict, path: str | os.PathLike) -> Path:
    rows = [r for r in record.get("candidates", []) if "mean" in r]
    fig = figure(6.4, 3.6)
    ax = fig.add_subplot()
    pools = list(dict.fromkeys(r["pool"] for r in rows))
    for pool in pools:
        mine = sorted((r for r in rows if r["pool"] == pool), key=lambda r: r["depth"])
        depth = [r["depth"] for r in mine]
        mean = [r["mean"] for r in mine]
        std = [r["std"] for r in mine]
        ax.errorbar(depth, mean, yerr=std, marker="o", capsize=3, label=pool, alpha=0.85)
    chosen = next(
        (r for r in rows if (r["cut"], r["pool"]) == (record.get("cut"), record.get("pool"))),
        None,
    )
    if chosen is not None:
        ax.plot(
            [chosen["depth"]],
            [chosen["mean"]],
            marker="*",
            markersize=18,
            color="black",
            linestyle="none",
            label=f"chosen: {chosen['cut']} + {chosen['pool']}",
        )
    ticks = sorted({(r["depth"], r["cut"]) for r in rows})
    ax.set_xticks([d for d, _ in ticks])
    ax.set_xticklabels([c.split("/")[-1] for _, c in ticks], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("cut (deeper to the right)")
    ax.set_ylabel("cross-validated probe accuracy")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"Transferability ({record.get('images', '?')} labelled images)", fontsize=10)
    return save(fig, path)

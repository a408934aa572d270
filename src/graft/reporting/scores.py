"""The held-out numbers every summary of a run shows the same way: the test scores next
to validation, and which epoch ``model.keras`` holds (the report's headline; the model
card's metrics). The worst-error gallery is :mod:`graft.reporting.gallery`'s.
"""

from __future__ import annotations


def headline_items(metrics: dict) -> list[tuple[str, object]]:
    """Test and kept-epoch numbers for the report's headline."""
    items = []
    if "test_accuracy" in metrics:
        items += [("test accuracy", metrics["test_accuracy"]), ("test loss", metrics["test_loss"])]
    if "val_accuracy" in metrics:
        items += [("val accuracy", metrics["val_accuracy"])]
    if "val_loss" in metrics:
        items += [("val loss", metrics["val_loss"])]
    if metrics.get("best_epoch") is not None:
        items += [("kept epoch", metrics["best_epoch"])]
    return items


def kept_line(metrics: dict) -> str:
    """One sentence: which epoch ``model.keras`` holds and why."""
    kept = metrics.get("kept")
    if not kept:
        return ""
    where = f"epoch {kept['epoch']} of {kept.get('last_epoch', '?')} (phase {kept.get('phase')})"
    if kept.get("keep") == "best":
        return f"model.keras holds {where}: the lowest {kept.get('monitor')}; last.keras the last."
    return f"model.keras holds the last epoch, {where}."

"""Class counts and the imbalance note of ``graft data check``.

Per class: images per split and the class's share of the training images. The note
names the largest and the smallest training class when one has at least
:data:`NOTE_RATIO` times the images of the other, and the classes with fewer than
:data:`FEW_IMAGES` images, with what graft can do about it: ``class_weight="auto"``
(``--class-weight auto``) weights the loss by balanced class weights; training itself
warns from :data:`WARN_RATIO` on.
"""

from __future__ import annotations

from graft.data.sources import LabelledFiles, imbalance

#: The data check notes an imbalance from this largest/smallest ratio on.
NOTE_RATIO = 1.5
#: Training warns from this ratio on (:func:`graft.data.sources.imbalance`'s default).
WARN_RATIO = 10.0
#: Classes with fewer training images than this are named in the note.
FEW_IMAGES = 10


def class_rows(splits: dict[str, LabelledFiles]) -> list[dict]:
    """One row per class: ``{"class", <split>: count, ..., "share"}``; ``share`` is the
    class's fraction of the training images (of the label assignments, multi-label)."""
    counts = {name: files.counts() for name, files in splits.items()}
    train = counts.get("train", {})
    total = sum(train.values())
    rows = []
    for name in next(iter(splits.values())).classes if splits else []:
        row = {"class": name}
        row.update({split: c.get(name, 0) for split, c in counts.items()})
        row["share"] = round(train.get(name, 0) / total, 4) if total else 0.0
        rows.append(row)
    return rows


def imbalance_summary(train_counts: dict[str, int], class_weight: str = "none") -> dict:
    """The ratio of the largest to the smallest training class and the note (or ``None``).

    Args:
        train_counts: Training images per class.
        class_weight: The run's ``class_weight`` setting, if known.

    Returns:
        ``{"ratio": float | None, "largest", "smallest", "few": [classes], "note": str | None}``.
    """
    present = {c: n for c, n in train_counts.items() if n > 0}
    out: dict = {"ratio": None, "largest": None, "smallest": None, "few": [], "note": None}
    if len(present) < 2:
        return out
    big, small = max(present, key=present.get), min(present, key=present.get)
    ratio = present[big] / present[small]
    few = sorted((c for c, n in present.items() if n < FEW_IMAGES), key=present.get)
    out.update(ratio=round(ratio, 2), largest=big, smallest=small, few=few)
    parts = []
    if imbalance(present, NOTE_RATIO):
        parts.append(
            f"'{big}' has {present[big]} training images, '{small}' {present[small]} ({ratio:.1f}x)"
        )
    if few:
        parts.append(f"{len(few)} class(es) with fewer than {FEW_IMAGES} images ({', '.join(few)})")
    if not parts:
        return out
    if class_weight == "auto":
        action = "class_weight auto is on: the loss weights classes by balanced weights"
    else:
        action = (
            "graft trains on the counts as they are (it warns from "
            f"{WARN_RATIO:.0f}x); --class-weight auto weights the loss by balanced class "
            "weights, or add images to the small classes"
        )
    out["note"] = f"Imbalance: {'; '.join(parts)}. {action}."
    return out

"""The gallery of the worst errors: thumbnails with file name, true and predicted label
and confidence, of the validation split and, with ``--test``, of the test split
(``metrics.json``'s ``"test_evaluation"``), each labelled. :func:`evaluate_split` makes
them when a split is evaluated; :func:`errors_sections` draws them in the report.

The thumbnails are PNG files in ``RUN_DIR/plots/`` (``error_NN.png``, and
``test_error_NN.png`` for the test split), written when the run is evaluated, so
``graft report`` can redraw the report without the images.
"""

from __future__ import annotations

import base64
import html
import os
import time
from pathlib import Path

from graft.reporting import evaluation, plots

#: File name of the k-th worst error's thumbnail in ``RUN_DIR/plots/``.
THUMBNAIL = "error_{:02d}.png"
THUMBNAIL_SIDE = 96
#: ``metrics.json`` section of the test split's evaluation (its worst errors included).
TEST_SECTION = "test_evaluation"
TEST_PREFIX = "test_"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def evaluate_split(
    run_dir: Path,
    model,
    batches,
    classes: list[str],
    split: str,
    paths=None,
    prefix: str = "",
    pixels=None,
    evaluated: evaluation.Evaluation | None = None,
) -> tuple[dict, list]:
    """Evaluate ``model`` on one split and write its worst errors' thumbnails.

    ``evaluated``: the split's evaluation when it was already made (its predictions are
    not made again; ``model`` and ``batches`` are then unused).

    Returns:
        The evaluation as a ``metrics.json`` section (``split``, ``seconds`` and
        ``worst_errors`` with file paths and thumbnails), and the worst errors' pixels.
    """
    start = time.perf_counter()
    ev = evaluated or evaluation.evaluate_model(model, batches, classes, paths=paths, pixels=pixels)
    result = {"split": split, **ev.as_dict()}
    write_thumbnails(run_dir, ev.worst, result["worst_errors"], prefix)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result, ev.worst


def write_thumbnails(
    run_dir: str | os.PathLike, worst: list, entries: list[dict], prefix: str = ""
) -> None:
    """Save each worst error's image as a thumbnail; name it in its ``entries`` dict.

    ``prefix`` tells the splits' thumbnails apart (``""``: validation, ``"test_"``)."""
    from PIL import Image

    folder = Path(run_dir) / plots.PLOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = prefix + THUMBNAIL
    for stale in folder.glob(name.replace("{:02d}", "*")):
        stale.unlink(missing_ok=True)
    for k, (item, entry) in enumerate(zip(worst, entries)):
        image = Image.fromarray(item.image)
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        image.save(folder / name.format(k))
        entry["thumbnail"] = f"{plots.PLOTS_DIR}/{name.format(k)}"


def errors_sections(run_dir: Path, metrics: dict) -> str:
    """The worst errors of the test split (when evaluated) and of the evaluated split,
    each under its own heading; just the latter's gallery when there is no test split."""
    ev = metrics.get("evaluation") or {}
    test = metrics.get(TEST_SECTION)
    if not test:
        return errors_section(run_dir, ev)
    return "".join(
        f'<h3 id="errors-{_e(part.get("split", "validation")).replace(" ", "-")}">'
        f"On the {_e(part.get('split', 'validation'))} split "
        f"({_e(part.get('images', 0))} images)</h3>{errors_section(run_dir, part)}"
        for part in (test, ev)
        if part
    )


def errors_section(run_dir: Path, ev: dict) -> str:
    """The worst errors, shown once: a gallery of thumbnails, each captioned with its file
    name, true and predicted label and confidence (the full path in its tooltip)."""
    worst = ev.get("worst_errors")
    if not ev.get("images") or ev.get("task") == "multi_label":
        return '<p class="muted">No evaluation data.</p>'
    if not worst:
        return "<p>No wrong predictions on the evaluated images.</p>"
    cards = []
    for w in worst:
        name = w.get("path") or f"image #{w['index']} in the split"
        label = Path(name).name if w.get("path") else name
        thumb = run_dir / w["thumbnail"] if w.get("thumbnail") else None
        img = ""
        if thumb is not None and thumb.is_file():
            data = base64.b64encode(thumb.read_bytes()).decode("ascii")
            img = f'<img src="data:image/png;base64,{data}" alt="{_e(label)}">'
        # One line each, cut with an ellipsis where too long (never broken mid-word);
        # the whole text is in the tooltip.
        lines = (
            label,
            f"true {w['true']}",
            f"predicted {w['predicted']}",
            f"confidence {float(w['confidence']):.2f}",
        )
        caption = "".join(f'<span title="{_e(t)}">{_e(t)}</span>' for t in lines)
        cards.append(
            f'<figure class="error" title="{_e(name)}">{img}<figcaption>{caption}'
            "</figcaption></figure>"
        )
    return f'<div class="gallery">{"".join(cards)}</div>'


CSS = (
    ".gallery{display:flex;flex-wrap:wrap;gap:.6rem}.gallery figure.error{width:140px;"
    "margin:0;font-size:.8rem}.gallery figcaption span{display:block;white-space:nowrap;"
    "overflow:hidden;text-overflow:ellipsis}.gallery figcaption span:first-child{"
    "font-weight:600}.gallery img{width:96px;height:auto;"
    "image-rendering:pixelated;border:2px solid #c33}"
)

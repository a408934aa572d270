"""``graft probe``: which layer of a backbone transfers best to the user's labelled images,
and :func:`choose_cut`, the same measurement for ``--cut auto`` (issue 23).

The measurement is :func:`graft.training.transfer.measure_transfer`; this module loads
the images, plans the folds, settles the input scaling, writes ``metrics/probe.json``
and draws the transferability curve.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graft.api import preflight
from graft.errors import DataError, GraftError

PROBE_JSON = Path("metrics") / "probe.json"
CURVE_PNG = Path("plots") / "transferability.png"


@dataclass(frozen=True)
class ProbeReport:
    """What :func:`probe` measured and wrote.

    Attributes:
        result: The :class:`graft.training.transfer.TransferResult`.
        folds: The :class:`graft.data.folds.Folds` used.
        scaling_how: Where the input scaling came from (``given``, ``registry``,
            ``evidence``, ``measured``, ``prior``).
        metrics: Path of the JSON record.
        curve: Path of the PNG curve.
        seconds: Wall time of the measurement (loading the backbone and images included).
    """

    result: object
    folds: object
    scaling_how: str
    metrics: Path
    curve: Path
    seconds: float


def probe(
    data,
    backbone,
    out,
    *,
    weights: str | None = None,
    image_size: int | None = None,
    alpha: float | None = None,
    cut: str | None = None,
    preprocess: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
    max_cuts: int | None = None,
    log=print,
) -> ProbeReport:
    """Score every candidate cut x pooling of ``backbone`` on the labelled images of ``data``.

    Args:
        data: A folder of class folders, or a ``.csv`` manifest (single-label).
        backbone: A registry name or a ``.keras``/``.h5`` file (nested models included).
        out: Folder for ``metrics/probe.json`` and ``plots/transferability.png``.
        weights, image_size, alpha, cut, preprocess: As for :func:`graft.train`.
        seed: Seed of the folds.
        batch_size: Images per forward batch.
        max_cuts: Block ends considered at most (default
            :data:`graft.training.transfer.MAX_CUTS`).
        log: Where progress lines go.
    """
    started = time.perf_counter()
    preflight.check_source(data, "DATA")
    if isinstance(backbone, str):
        preflight.check_backbone(backbone)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise GraftError(f"--out {out} exists and is not a folder.")
    from graft.core.loaders import is_model_path, resolve
    from graft.data.folds import plan_folds
    from graft.reporting.transfer_plot import transferability_curve
    from graft.runs import files
    from graft.training.transfer import MAX_CUTS, measure_transfer

    bb = resolve(
        backbone,
        weights=weights,
        image_size=image_size,
        alpha=alpha,
        cut=cut,
        preprocess=preprocess,
    )
    images, labels, classes = labelled_images(data, bb.image_size, bb.channels)
    log(f"{len(labels)} labelled images, {len(classes)} classes, at {bb.image_size[0]} px")
    folds = plan_folds(labels, seed=seed, val_split="auto")
    log(folds.line())
    user_file = not isinstance(backbone, str) or is_model_path(backbone)
    scaling, how = _scaling(bb, images, labels, folds, preprocess, user_file)
    log(f"input scaling: {scaling} ({how})")
    result = measure_transfer(
        bb.model,
        bb.blocks,
        images,
        labels,
        folds,
        scalings=(scaling,),
        num_classes=len(classes),
        max_cuts=max_cuts or MAX_CUTS,
        batch_size=batch_size,
        seed=seed,
    )
    record = {
        "backbone": str(backbone),
        "backbone_cut": cut,
        "scaling_how": how,
        "classes": list(classes),
        "validation": folds.as_dict(),
        **result.as_dict(),
    }
    seconds = time.perf_counter() - started
    record["seconds"] = round(seconds, 2)
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / PROBE_JSON
    metrics.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(metrics, json.dumps(record, indent=1).encode())
    curve = out / CURVE_PNG
    curve.parent.mkdir(parents=True, exist_ok=True)
    transferability_curve(record, curve)
    return ProbeReport(result, folds, how, metrics, curve, seconds)


def choose_cut(
    backbone, images, labels, folds, *, seed: int = 0, scalings: tuple[str, ...] = (), **options
):
    """``(cut, pool, result)`` for ``--cut auto``: the cut and pooling (and scaling, of
    several) with the best cross-validated probe score
    (:func:`graft.training.transfer.choose`).

    Args:
        backbone: The resolved :class:`graft.core.loaders.Backbone` (its ``model`` without
            graft's preprocessing, its ``blocks``).
        images: The labelled (training) images, raw 0-255, NHWC at the backbone's size;
            never the test split.
        labels: Integer class per image.
        folds: :func:`graft.data.folds.plan_folds` over ``labels``.
        seed: Seed of the probe.
        scalings: The input scalings to measure, one forward pass each (default:
            ``backbone.preprocess``); ``result.scaling`` is the chosen one.
        **options: Passed to :func:`~graft.training.transfer.measure_transfer`
            (``num_classes``, ``max_cuts``, ``batch_size``, ``grid``, ``forward``).

    Returns:
        ``cut``: the chosen layer's path, or ``None`` when it is the model's own output
        (keep the whole backbone); ``pool``: the head's pooling; ``result``: the
        :class:`~graft.training.transfer.TransferResult` (``as_dict()`` for
        ``metrics.json``, ``line()`` for the log).
    """
    from graft.training.transfer import measure_transfer

    result = measure_transfer(
        backbone.model,
        backbone.blocks,
        images,
        labels,
        folds,
        scalings=tuple(scalings) or (backbone.preprocess,),
        seed=seed,
        **options,
    )
    cut = None if result.cut == result.output else result.cut
    return cut, result.pool, result


def curve_figure(record: dict, run_dir) -> Path:
    """Draw the transferability curve of ``record`` (``TransferResult.as_dict()``) into
    ``RUN_DIR/plots/transferability.png`` and return its path (for the report)."""
    from graft.reporting.transfer_plot import transferability_curve

    path = Path(run_dir) / CURVE_PNG
    path.parent.mkdir(parents=True, exist_ok=True)
    return transferability_curve(record, path)


def labelled_images(data, image_size, channels: int):
    """``(images, labels, classes)``: every readable image of ``data`` decoded at
    ``image_size`` (raw 0-255 floats); unreadable files are skipped."""
    from graft.data.pipelines import load_image
    from graft.data.sources import load_source

    found = load_source(data)
    if found.multi_label:
        raise DataError("graft probe needs single-label data (one class per image).")
    images, labels = [], []
    for path, label in zip(found.paths, found.labels):
        try:
            images.append(load_image(path, image_size, channels))
        except (OSError, ValueError):
            continue
        labels.append(int(label))
    if len(set(labels)) < 2:
        raise DataError(f"{data}: graft probe needs readable images of at least 2 classes.")
    return np.stack(images), np.asarray(labels), list(found.classes)


def _scaling(bb, images, labels, folds, given, user_file) -> tuple[str, str]:
    """The input scaling: given, the registry's, or (a user file) ``choose_inputs``'s."""
    if given is not None:
        return given, "given"
    if not user_file:
        return bb.preprocess, "registry"
    from graft.training.candidates import choose_inputs

    choice = choose_inputs(bb.model, images, labels, folds, num_classes=int(labels.max()) + 1)
    return choice.scaling, choice.how.get("scaling", "measured")

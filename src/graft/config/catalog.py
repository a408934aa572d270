"""The backbone catalog: what is known of each ``keras.applications`` architecture
without building it, in pure Python (``graft backbones`` answers without TensorFlow).

One row per architecture: its registry name and constructor, family, input sizes, the
preprocessing its ImageNet weights expect, whether it takes a width multiplier, and
Keras's published figures (https://keras.io/api/applications/): parameters and weight
file size *with* the 1000-class ImageNet top, ImageNet validation top-1 and top-5
accuracy (%). MobileNetV3 is not in that table; its numbers are from the table in
``keras.applications.MobileNetV3Small``'s documentation (no file size or top-5 given).
``None``: not published.

:mod:`graft.core.registry` adds the block rules and is the registry the loaders use.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from graft.errors import GraftError


@dataclass(frozen=True)
class BackboneFacts:
    """One architecture's static facts (see the module docstring for the sources)."""

    name: str
    constructor: str
    family: str
    default_size: int
    min_size: int
    preprocess: str
    takes_alpha: bool
    params_m: float
    size_mb: float | None
    top1: float | None
    top5: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _row(name, constructor, size, preprocess, published, **kw):
    """One backbone; ``published``: Keras's ``(params (M), size (MB), top-1, top-5)``."""
    params, mb, top1, top5 = published
    return BackboneFacts(
        name,
        constructor,
        re.match(r"[a-z]+", name).group(),  # the family: resnet50_v2 -> resnet
        size,
        kw.get("min_size", 32),
        preprocess,
        kw.get("alpha", False),
        params,
        mb,
        top1,
        top5,
    )


_ROWS = [
    # name, constructor, size, preprocess, (params (M), size (MB), top-1, top-5)
    _row("vgg16", "VGG16", 224, "caffe", (138.4, 528, 71.3, 90.1)),
    _row("vgg19", "VGG19", 224, "caffe", (143.7, 549, 71.3, 90.0)),
    _row("resnet50", "ResNet50", 224, "caffe", (25.6, 98, 74.9, 92.1)),
    _row("resnet101", "ResNet101", 224, "caffe", (44.7, 171, 76.4, 92.8)),
    _row("resnet152", "ResNet152", 224, "caffe", (60.4, 232, 76.6, 93.1)),
    _row("resnet50_v2", "ResNet50V2", 224, "symmetric", (25.6, 98, 76.0, 93.0)),
    _row("resnet101_v2", "ResNet101V2", 224, "symmetric", (44.7, 171, 77.2, 93.8)),
    _row("resnet152_v2", "ResNet152V2", 224, "symmetric", (60.4, 232, 78.0, 94.2)),
    _row("mobilenet", "MobileNet", 224, "symmetric", (4.3, 16, 70.4, 89.5), alpha=True),
    _row("mobilenet_v2", "MobileNetV2", 224, "symmetric", (3.5, 14, 71.3, 90.1), alpha=True),
    _row(
        "mobilenet_v3_small", "MobileNetV3Small", 224, "none", (2.9, None, 68.1, None), alpha=True
    ),
    _row(
        "mobilenet_v3_large", "MobileNetV3Large", 224, "none", (5.4, None, 75.6, None), alpha=True
    ),
    _row("inception_v3", "InceptionV3", 299, "symmetric", (23.9, 92, 77.9, 93.7), min_size=75),
    _row(
        "inception_resnet_v2",
        "InceptionResNetV2",
        299,
        "symmetric",
        (55.9, 215, 80.3, 95.3),
        min_size=75,
    ),
    _row("xception", "Xception", 299, "symmetric", (22.9, 88, 79.0, 94.5), min_size=71),
    _row("densenet121", "DenseNet121", 224, "torch", (8.1, 33, 75.0, 92.3)),
    _row("densenet169", "DenseNet169", 224, "torch", (14.3, 57, 76.2, 93.2)),
    _row("densenet201", "DenseNet201", 224, "torch", (20.2, 80, 77.3, 93.6)),
    _row("nasnet_mobile", "NASNetMobile", 224, "symmetric", (5.3, 23, 74.4, 91.9)),
    _row("nasnet_large", "NASNetLarge", 331, "symmetric", (88.9, 343, 82.5, 96.0)),
    _row("efficientnet_b0", "EfficientNetB0", 224, "none", (5.3, 29, 77.1, 93.3)),
    _row("efficientnet_b1", "EfficientNetB1", 240, "none", (7.9, 31, 79.1, 94.4)),
    _row("efficientnet_b2", "EfficientNetB2", 260, "none", (9.2, 36, 80.1, 94.9)),
    _row("efficientnet_b3", "EfficientNetB3", 300, "none", (12.3, 48, 81.6, 95.7)),
    _row("efficientnet_b4", "EfficientNetB4", 380, "none", (19.5, 75, 82.9, 96.4)),
    _row("efficientnet_b5", "EfficientNetB5", 456, "none", (30.6, 118, 83.6, 96.7)),
    _row("efficientnet_b6", "EfficientNetB6", 528, "none", (43.3, 166, 84.0, 96.8)),
    _row("efficientnet_b7", "EfficientNetB7", 600, "none", (66.7, 256, 84.3, 97.0)),
    _row("efficientnet_v2_b0", "EfficientNetV2B0", 224, "none", (7.2, 29, 78.7, 94.3)),
    _row("efficientnet_v2_b1", "EfficientNetV2B1", 240, "none", (8.2, 34, 79.8, 95.0)),
    _row("efficientnet_v2_b2", "EfficientNetV2B2", 260, "none", (10.2, 42, 80.5, 95.1)),
    _row("efficientnet_v2_b3", "EfficientNetV2B3", 300, "none", (14.5, 59, 82.0, 95.8)),
    _row("efficientnet_v2_s", "EfficientNetV2S", 384, "none", (21.6, 88, 83.9, 96.7)),
    _row("efficientnet_v2_m", "EfficientNetV2M", 480, "none", (54.4, 220, 85.3, 97.4)),
    _row("efficientnet_v2_l", "EfficientNetV2L", 480, "none", (119.0, 479, 85.7, 97.5)),
    _row("convnext_tiny", "ConvNeXtTiny", 224, "none", (28.6, 109.42, 81.3, None)),
    _row("convnext_small", "ConvNeXtSmall", 224, "none", (50.2, 192.29, 82.3, None)),
    _row("convnext_base", "ConvNeXtBase", 224, "none", (88.5, 338.58, 85.3, None)),
    _row("convnext_large", "ConvNeXtLarge", 224, "none", (197.7, 755.07, 86.3, None)),
    _row("convnext_xlarge", "ConvNeXtXLarge", 224, "none", (350.1, 1310, 86.7, None)),
]
CATALOG: dict[str, BackboneFacts] = {row.name: row for row in _ROWS}
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(row.family for row in _ROWS))
#: ``--sort`` keys: smallest first for sizes, best first for accuracy.
SORT_KEYS = ("name", "params", "size", "top1")

#: Blocks per architecture at its default size, generated by ``python -m graft.core.loaders``.
BLOCK_COUNTS_FILE = Path(__file__).with_name("block_counts.json")


def block_counts() -> dict[str, int]:
    """``{name: number of blocks}`` from the shipped table (empty where it is missing)."""
    if not BLOCK_COUNTS_FILE.is_file():
        return {}
    return json.loads(BLOCK_COUNTS_FILE.read_text("utf-8"))


def parse_count(text, name: str = "max_params") -> float:
    """A parameter count, in millions, from ``"5"``/``"5M"`` (millions), ``"500k"`` or
    ``"1.2G"``; a clear error otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGbB]?)\s*", str(text))
    if not match:
        raise GraftError(
            f"Expected a parameter count in millions such as 10, 10M or 500k. "
            f"Received: {name}={text}"
        )
    scale = {"k": 1e-3, "m": 1.0, "": 1.0, "g": 1e3, "b": 1e3}[match.group(2).lower()]
    return float(match.group(1)) * scale


def select(
    family: str | None = None, max_params: float | None = None, sort: str | None = None
) -> list[BackboneFacts]:
    """The catalog's rows of ``family`` with at most ``max_params`` million parameters,
    in table order or sorted by ``sort`` (one of :data:`SORT_KEYS`)."""
    if family is not None and family not in FAMILIES:
        raise GraftError(
            f"Unknown family: {family!r}. Expected one of {', '.join(FAMILIES)}. "
            f"Received: family={family}"
        )
    if sort is not None and sort not in SORT_KEYS:
        raise GraftError(
            f"Unknown sort key: {sort!r}. Expected one of {', '.join(SORT_KEYS)}. "
            f"Received: sort={sort}"
        )
    rows = [
        r
        for r in _ROWS
        if (family is None or r.family == family)
        and (max_params is None or r.params_m <= max_params)
    ]
    if sort == "name":
        rows.sort(key=lambda r: r.name)
    elif sort in ("params", "size"):
        field = "params_m" if sort == "params" else "size_mb"
        rows.sort(key=lambda r: (getattr(r, field) is None, getattr(r, field) or 0))
    elif sort == "top1":
        rows.sort(key=lambda r: (r.top1 is None, -(r.top1 or 0)))
    return rows

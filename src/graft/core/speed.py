"""Forward speed of a registry backbone on this machine (``graft backbones --measure``)."""

from __future__ import annotations

import statistics
import time

import keras
import numpy as np

from graft.core.loaders import load_backbone

MEASURE_BATCH = 32
MEASURE_REPEATS = 3


def forward_speed(
    name: str,
    image_size: int | None = None,
    batch_size: int = MEASURE_BATCH,
    repeats: int = MEASURE_REPEATS,
) -> dict:
    """Images per second of a backbone's forward pass, as grafted (no ImageNet top).

    Built with random weights (nothing is downloaded) at ``image_size`` (default: the
    architecture's own); one warm-up batch (tracing), then the median of ``repeats``
    timed batches of ``batch_size`` random images.

    Returns:
        ``{"images_per_s", "image_size", "batch_size", "backbone_params"}``.
    """
    bb = load_backbone(name, weights=None, image_size=image_size)
    try:
        side = bb.image_size[0]
        x = np.random.default_rng(0).uniform(0, 255, (batch_size, side, side, 3))
        x = x.astype("float32")
        bb.model.predict_on_batch(x)  # warm-up: traces and compiles
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            bb.model.predict_on_batch(x)
            times.append(time.perf_counter() - start)
        return {
            "images_per_s": batch_size / statistics.median(times),
            "image_size": side,
            "batch_size": batch_size,
            "backbone_params": int(bb.model.count_params()),
        }
    finally:
        del bb
        keras.backend.clear_session()

"""The data order graft owns: which images an epoch visits, in which order.

The order of epoch ``e`` of a run is a permutation drawn from NumPy's ``PCG64`` seeded
with ``(seed, e)`` alone, so any epoch's order can be recomputed from its index: an
exact resume needs only the epoch it continues from (no replay of a reader's shuffles),
and every reader (images, cached features, cached activations; ``tf.data`` on TensorFlow,
:mod:`graft.data.neutral` on the other backends) visits the same images in the same
order on every backend.

Example:
    >>> epoch_order(5, seed=0, epoch=0).tolist() == epoch_order(5, 0, 0).tolist()
    True
"""

from __future__ import annotations

import numpy as np


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The positions ``0..count-1`` in the order epoch ``epoch`` visits them (int64)."""
    words = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch) & 0xFFFFFFFFFFFFFFFF]
    generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))
    return generator.permutation(int(count)).astype(np.int64)

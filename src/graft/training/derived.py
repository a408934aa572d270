"""Head-phase features derived from cached activations: one bottom pass per image.

A hybrid (or gradual) plan first trains the head on a frozen backbone (on the feature
cache, :mod:`graft.training.cache`), then the top of the backbone on cached activations
of its frozen bottom (:mod:`graft.training.activations`). Both start from the same images
and the same bottom, so once the activations are cached the head's input needs no second
pass over the images: it is the rest of the backbone and the head-input pooling, run in
inference mode over the cached activation rows (a fraction of the bottom's cost).

A derived feature entry has its own key: the checksum of the activation entry it was
computed from (so it changes whenever that entry does: other data, bottom, boundary,
view or dtype), the configuration and weights of the layers above the boundary, and the
pooling. float16 activations give features within the activation cache's parity bound
(:data:`graft.training.activations.PARITY`); float32 ones agree with the image pass
to float round-off. Derived entries are feature-cache entries, in the same verified store
(:mod:`graft.training.store`).
"""

from __future__ import annotations

import keras
import numpy as np

from graft.core import keras_compat
from graft.core.model import backbone_of, head_input
from graft.core.model_utils import layer_key, pooling_layers_of, weights_fingerprint
from graft.training import cache
from graft.training.feed import entry_dataset, images_only

#: Version of what a key describes (the files' own format: :data:`graft.training.store.FORMAT`).
KEY_VERSION = 1


def features_top(model: keras.Model, boundary) -> keras.Model:
    """The boundary activation -> the head's input (top of the backbone and pooling),
    through the *same* layers as ``model``."""
    backbone = backbone_of(model)
    inner = keras.Model(boundary.tensor, backbone.output, name="graft_top_backbone")
    called = next(n for n in keras_compat.graph_nodes(model) if n.operation is backbone)
    pooled = keras.Model(called.output_tensors[0], head_input(model), name="graft_top_pooling")
    inputs = keras.Input(boundary.shape, name="activations")
    return keras.Model(inputs, pooled(inner(inputs)), name="graft_top_features")


def derived_key(entry, extractor: keras.Model, model: keras.Model, boundary) -> str:
    """The key of the features derived from the verified activation ``entry``."""
    layers = backbone_of(model).layers[boundary.index :]
    description = {
        "format": KEY_VERSION,
        "activations": entry.sha256,
        "dtype": entry.dtype,
        "boundary": [boundary.index, boundary.layer, list(boundary.shape)],
        "layers": [layer_key(x) for x in layers],
        "pooling": [layer_key(x) for x in pooling_layers_of(model)],
        "weights": weights_fingerprint(extractor),
        "keras": keras.__version__,
    }
    return cache.digest(description)


def from_activations(acts, model: keras.Model, batch_size: int):
    """``derive(split, view)`` for :func:`graft.training.cache.cached_datasets`: the
    ``(extractor, batches, key)`` that compute a split's features from its cached
    activations, or ``None`` where ``acts`` holds none for it (or its bottom has changed
    since): that split is computed from its images as before.

    Every derived split is recorded in ``acts.summary["head_features"]`` (metrics.json).
    """
    if acts is None or acts.source is not model or acts.bottom is None:
        return None
    if weights_fingerprint(acts.bottom) != acts.bottom_weights:
        return None
    extractor = features_top(model, acts.boundary)
    batch = max(batch_size, cache.INFERENCE_BATCH)

    def derive(split: str, view=None):
        entry = acts.entries.get((split, view))
        if entry is None:
            return None
        key = derived_key(entry, extractor, model, acts.boundary)
        labels = np.zeros(entry.rows, "int32")  # not used: the rows, in order
        rows = images_only(entry_dataset(entry, labels, batch))
        label = split if view is None else f"{split}, view {view + 1}"
        acts.summary.setdefault("head_features", {"derived_from_activations": []})
        acts.summary["head_features"]["derived_from_activations"].append(label)
        return extractor, rows, key

    return derive

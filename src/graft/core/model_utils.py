"""Views of a grafted model (:mod:`graft.core.model`) that the caches, evaluation and drift
share: its feature extractor and its head as models of their own (sharing its layers),
what keys its features, and one inference function per extractor.
"""

from __future__ import annotations

import hashlib
import weakref

import keras
import numpy as np

from graft.core.model import BACKBONE_NAME, HEAD_PREFIX, head_input, head_input_layer


def features_model(model: keras.Model) -> keras.Model:
    """Raw images -> the head's input (:func:`graft.core.model.head_input`): preprocessing,
    backbone and pooling of ``model``."""
    return keras.Model(model.input, head_input(model), name="graft_features")


def head_model(model: keras.Model) -> keras.Model:
    """Features -> probabilities, through the *same* head layers as ``model``.

    Training this model trains ``model``'s head: the layers (and weights) are shared.
    """
    start = head_input_layer(model)
    layers = model.layers[model.layers.index(start) + 1 :]
    if not all(layer.name.startswith(HEAD_PREFIX) for layer in layers):
        raise ValueError("The model's head is not a simple chain of head_* layers.")
    source = start.output
    inputs = keras.Input(tuple(source.shape[1:]), name="features")
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x, name="graft_head")


def layer_key(layer) -> list:
    """A layer's part of a cache key: its type and configuration (name excluded)."""
    return [type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"}]


def pooling_layers_of(model: keras.Model) -> list:
    """The layers from the backbone's output to the head's input (pooling, identity)."""
    end = model.layers.index(head_input_layer(model))
    start = model.layers.index(model.get_layer(BACKBONE_NAME))
    return model.layers[start + 1 : end + 1]


def weights_fingerprint(model: keras.Model) -> str:
    """A digest of every weight of ``model`` (paths, shapes, dtypes and values, in order)."""
    digest = hashlib.blake2b(digest_size=16)
    for variable in model.weights:
        value = np.ascontiguousarray(np.asarray(variable))
        digest.update(f"{variable.path}:{value.shape}:{value.dtype};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forward_function(extractor: keras.Model, spec):
    """``extractor`` in inference mode as one ``tf.function`` for any batch size, traced
    once per extractor and input shape (the train and validation passes share it).
    ``spec`` is a batch or its ``tf.TensorSpec``. Other backends: Keras's
    ``predict_on_batch``."""
    if keras.backend.backend() != "tensorflow":
        return extractor.predict_on_batch
    import tensorflow as tf

    signature = tf.TensorSpec((None, *spec.shape[1:]), spec.dtype)
    functions = _FORWARD.setdefault(extractor, {})
    key = (tuple(signature.shape), signature.dtype.name)
    if key not in functions:
        model = weakref.ref(extractor)  # the function must not keep its key alive
        functions[key] = tf.function(
            lambda x: model()(x, training=False), input_signature=[signature]
        )
    return functions[key]

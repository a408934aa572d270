"""Every use graft makes of Keras's private API, in one place, each with the reason.

Keras 3 has no public way to do a few things graft needs: walk every layer a layer
tracks (nested models, a KerasHub backbone's layers), read a functional model's call
graph (which tensors each call of a layer read and produced), find the layer that
produced a symbolic tensor, or build a compiled model's optimizer and metrics before
``fit``. These functions wrap those private attributes so that the rest of graft calls
a named, documented function, and so that ``tests/test_keras_compat.py`` (one test per
function) fails loudly, naming the function, when a Keras upgrade removes or changes
one of them; nothing else in ``src/graft`` touches a ``keras`` object's ``_private``
attribute or imports ``keras.src``.

Backend-specific workarounds are not here: the TensorFlow-only patches for
multi-worker training stay behind the TensorFlow seam in
:mod:`graft.training.distribute`, with their own tests.
"""

from __future__ import annotations


def sublayers(layer, *, include_self: bool = False, recursive: bool = True) -> list:
    """Every layer ``layer`` tracks, depth first, each once (``Layer._flatten_layers``).

    Why private: ``Model.layers`` lists only a functional model's own top-level layers,
    and a plain ``Layer`` (a KerasHub backbone, a block holding a stack of layers) has no
    public list of the layers it holds at all. Freezing, weight-decay exclusions, BN
    recalibration and "is every layer Keras's own" must see all of them.
    """
    return list(layer._flatten_layers(include_self=include_self, recursive=recursive))


def has_graph(model) -> bool:
    """Whether ``model`` is a functional model with a call graph :func:`graph_nodes` can
    read (a subclassed model has none)."""
    return hasattr(model, "_nodes_by_depth")


def graph_nodes(model) -> list:
    """Every call node of a functional ``model``'s own graph (``Functional._nodes_by_depth``).

    Why private: the public ``layers`` loses which call of a layer read which tensors; the
    activation cache needs the tensors that cross a layer index, and a nested backbone's
    call node gives the exact tensor the head reads.
    """
    return [node for nodes in model._nodes_by_depth.values() for node in nodes]


def producer(tensor):
    """The layer (operation) that produced the symbolic ``tensor``, or ``None`` for a
    tensor that is not a Keras graph tensor (``KerasTensor._keras_history``).

    Why private: Keras records a symbolic tensor's origin only there; cutting a model
    and naming a multi-output model's outputs both need it.
    """
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def inbound_nodes(layer) -> list:
    """The call nodes in which ``layer`` was called (``Operation._inbound_nodes``).

    Why private: a layer reused by several graphs (a backbone nested in a model) has one
    node per call; a cut must pick the call inside the model being cut.
    """
    return list(layer._inbound_nodes)


def outbound_nodes(layer) -> list:
    """The call nodes that read ``layer``'s output (``Operation._outbound_nodes``); an
    empty list for an object without them.

    Why private: block detection must see where a layer's output forks (two units of a
    container read it), which the public API does not expose.
    """
    return list(getattr(layer, "_outbound_nodes", []))


def strategy_of(model):
    """The ``tf.distribute`` strategy ``model`` was created under, or ``None``
    (``Trainer._distribute_strategy``).

    Why private: the public ``model.distribute_strategy`` falls back to TensorFlow's
    default strategy when there is none, so it cannot say whether one was used; under
    a strategy Keras builds the model itself and each fit makes one more iterator.
    """
    return getattr(model, "_distribute_strategy", None)


def symbolic_build(model, data_batch) -> bool:
    """Build a compiled ``model``'s optimizer, loss and metric variables from a batch or
    its ``element_spec`` (``Trainer._symbolic_build``); ``False`` where this Keras has no
    such method (``fit`` then builds them lazily, as it always did).

    Why private: without it, Keras creates those variables while tracing the first
    training step, and a ``tf.function`` that creates variables is traced twice (0.5-1 s
    more in the first epoch of every phase). ``Model.build`` builds only the layers.
    """
    build = getattr(model, "_symbolic_build", None)
    if build is None:
        return False
    build(data_batch=data_batch)
    return True

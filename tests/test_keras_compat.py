"""One test per private Keras API graft relies on (graft.core.keras_compat).

Each test checks exactly what graft's callers need of the private attribute behind one
function. When a Keras upgrade removes or changes it, the failure names the function to
fix and the Keras version, instead of surfacing as an AttributeError deep in a run.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest

from graft.core import keras_compat


@contextlib.contextmanager
def compat(name: str):
    """Turn any failure inside into one loud line naming the compat function."""
    try:
        yield
    except Exception as exc:  # AttributeError when Keras drops the attribute
        pytest.fail(
            f"Keras {keras.__version__} changed the private API behind "
            f"graft.core.keras_compat.{name}: {type(exc).__name__}: {exc}",
            pytrace=True,
        )


class _Stack(keras.layers.Layer):
    """A plain layer holding layers: no public list of them exists."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = [keras.layers.Dense(3, name="s1"), keras.layers.Dense(3, name="s2")]

    def call(self, x):
        for layer in self.inner:
            x = layer(x)
        return x


def _nested():
    """A functional model calling a functional backbone (holding a :class:`_Stack`)."""
    x = keras.Input((4,), name="bb_in")
    h = keras.layers.Dense(3, name="b1")(x)
    backbone = keras.Model(x, _Stack(name="stack")(h), name="backbone")
    inputs = keras.Input((4,), name="in")
    outputs = keras.layers.Dense(2, name="head")(backbone(inputs))
    return keras.Model(inputs, outputs, name="outer"), backbone


def test_sublayers():
    model, backbone = _nested()
    with compat("sublayers"):
        names = [layer.name for layer in keras_compat.sublayers(model)]
        assert {"backbone", "b1", "stack", "s1", "s2", "head"} <= set(names), names
        assert "outer" not in names
        assert keras_compat.sublayers(model, include_self=True)[0] is model
        direct = [layer.name for layer in keras_compat.sublayers(backbone, recursive=False)]
        assert "stack" in direct and "s1" not in direct, direct
        stack = backbone.get_layer("stack")
        assert [x.name for x in keras_compat.sublayers(stack, recursive=False)] == ["s1", "s2"]
        leaf = backbone.get_layer("b1")
        assert keras_compat.sublayers(leaf, recursive=False) == []


def test_has_graph():
    model, _ = _nested()

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with compat("has_graph"):
        assert keras_compat.has_graph(model)
        assert not keras_compat.has_graph(Subclassed())


def test_graph_nodes():
    model, backbone = _nested()
    with compat("graph_nodes"):
        nodes = keras_compat.graph_nodes(model)
        called = [n for n in nodes if n.operation is backbone]
        assert len(called) == 1
        (node,) = called
        out = node.output_tensors[0]
        assert tuple(out.shape) == (None, 3)
        assert keras.tree.flatten(node.input_tensors)[0] is model.inputs[0]
        assert {n.operation.name for n in keras_compat.graph_nodes(backbone)} >= {"b1", "stack"}


def test_producer():
    model, backbone = _nested()
    with compat("producer"):
        assert keras_compat.producer(model.outputs[0]) is model.get_layer("head")
        assert keras_compat.producer(backbone.outputs[0]) is backbone.get_layer("stack")
        assert isinstance(keras_compat.producer(model.inputs[0]), keras.layers.InputLayer)
        assert keras_compat.producer(np.zeros(2)) is None


def test_inbound_nodes():
    shared = keras.layers.Dense(2, name="shared")
    a, b = keras.Input((2,)), keras.Input((2,))
    keras.Model([a, b], [shared(a), shared(b)])
    with compat("inbound_nodes"):
        nodes = keras_compat.inbound_nodes(shared)
        assert len(nodes) == 2 and all(n.operation is shared for n in nodes)
        assert [n.input_tensors[0] for n in nodes] == [a, b]


def test_outbound_nodes():
    x = keras.Input((2,))
    fork = keras.layers.Dense(2, name="fork")
    h = fork(x)
    left, right = keras.layers.Dense(2, name="left"), keras.layers.Dense(2, name="right")
    keras.Model(x, keras.layers.Add()([left(h), right(h)]))
    with compat("outbound_nodes"):
        readers = {n.operation.name for n in keras_compat.outbound_nodes(fork)}
        assert readers == {"left", "right"}
        assert keras_compat.outbound_nodes(object()) == []


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute")
def test_strategy_of():
    import tensorflow as tf

    plain = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        scoped = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with compat("strategy_of"):
        assert keras_compat.strategy_of(plain) is None
        assert plain.distribute_strategy is not None  # why the public property cannot say
        assert keras_compat.strategy_of(scoped) is strategy


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="element_spec")
def test_symbolic_build():
    import tensorflow as tf

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    data = tf.data.Dataset.from_tensor_slices((np.zeros((8, 4), "float32"), np.zeros(8, "int32")))
    assert not model.optimizer.built
    with compat("symbolic_build"):
        assert keras_compat.symbolic_build(model, data.batch(4).element_spec) is True
        assert model.optimizer.built and model.optimizer.variables
    assert keras_compat.symbolic_build(object(), None) is False

"""BatchNorm recalibration (AdaBN): statistics of the target data, nothing else changed."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import changed, snapshot
from graft.core import regularizers
from graft.core.backbones import resolve
from graft.core.model import backbone_of, build_model
from graft.data.pipelines import array_pipeline


@pytest.fixture
def cnn(cnn_file):
    return resolve(str(cnn_file), cut="block3_pool", preprocess="unit")


def _bn_inputs(model, x):
    """Each BN layer's input on ``x`` in inference mode (with the current statistics)."""
    bb = backbone_of(model)
    layers = regularizers.bn_layers(model)
    probe = keras.Model(bb.inputs, [layer.input for layer in layers])
    return layers, probe.predict(x.astype("float32") / 255.0, verbose=0)  # "unit" preprocessing


def test_recalibration_sets_each_bn_to_the_target_statistics(cnn, small_arrays):
    x, y = small_arrays
    model = build_model(cnn, 3)
    before = snapshot(model)
    flags = [(layer.trainable, layer.momentum) for layer in regularizers.bn_layers(model)]
    n = regularizers.recalibrate_bn(model, array_pipeline(x, y, len(x)))  # one batch
    assert n == 3
    moved = changed(before, snapshot(model))
    stats = {p for p in before if p.endswith(("moving_mean", "moving_variance"))}
    assert moved == stats  # every statistic moved; no kernel, gamma, beta or head weight did
    layers, inputs = _bn_inputs(model, x)
    for layer, h in zip(layers, inputs):
        np.testing.assert_allclose(layer.moving_mean.numpy(), h.mean(axis=(0, 1, 2)), atol=1e-4)
        np.testing.assert_allclose(
            layer.moving_variance.numpy(), h.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5
        )
    assert [(layer.trainable, layer.momentum) for layer in layers] == flags


def test_cumulative_average_over_batches_gives_the_data_mean(cnn, small_arrays):
    """Momentum 0.5 (the layer's own) would weight the last batch by half; the cumulative
    average weighs every image the same."""
    x, y = small_arrays
    model = build_model(cnn, 3)
    regularizers.recalibrate_bn(model, array_pipeline(x, y, 8))  # 3 batches
    layers, inputs = _bn_inputs(model, x)
    first = layers[0]  # its input does not depend on any BN statistics
    np.testing.assert_allclose(first.moving_mean.numpy(), inputs[0].mean(axis=(0, 1, 2)), atol=1e-4)
    per_batch = [inputs[0][i : i + 8].var(axis=(0, 1, 2)) for i in (0, 8, 16)]
    np.testing.assert_allclose(first.moving_variance.numpy(), np.mean(per_batch, axis=0), rtol=1e-3)


def test_recalibrate_bn_option_runs_before_training(tmp_path, cnn_file, small_arrays):
    import graft

    lines = []
    run = graft.train(
        small_arrays,
        str(cnn_file),
        cut="block3_pool",
        preprocess="unit",
        strategy="feature",
        epochs=1,
        batch_size=8,
        recalibrate_bn=True,
        log=lines.append,
        verbose=0,
    )
    assert any("Recalibrated the statistics of 3 BatchNorm layers" in line for line in lines)
    assert any("Feature cache off" in line for line in lines)
    bn = regularizers.bn_layers(run.model)[0]
    assert not np.allclose(bn.moving_mean.numpy(), np.linspace(-0.5, 0.5, 8))

"""Per-block learning rates, weight decay without BN/biases, and L2-SP, number by number."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from graft.config.strategies import Phase
from graft.core import freezing, optim, regularizers
from graft.core.backbones import resolve
from graft.core.model import HeadConfig, backbone_of, build_model
from graft.data.pipelines import array_pipeline
from graft.training.trainer import Trainer


@pytest.fixture
def cnn(cnn_file):
    return resolve(str(cnn_file), cut="block3_pool", preprocess="unit")


def _step(model, blocks, phase, grad=1.0):
    """One optimizer step with the same gradient for every trainable variable.

    Returns ``{variable path: update}`` (new value minus old value)."""
    freezing.apply(model, blocks, phase.trainable, phase.train_bn)
    opt = optim.make_optimizer(phase, model, blocks)
    variables = model.trainable_variables
    before = {v.path: np.array(v.numpy()) for v in variables}
    opt.apply([keras.ops.full(v.shape, grad) for v in variables], variables)
    return {v.path: np.array(v.numpy()) - before[v.path] for v in variables}


def _block_of(blocks, path):
    for b in blocks:
        for layer in b.layers:
            if any(v.path == path for v in layer.weights):
                return b.name
    return "head"


def test_lr_mult_halves_the_step_of_the_block_below(cnn):
    model = build_model(cnn, 3)
    phase = Phase("t", "blocks:2", lr=0.1, backbone_lr=0.04, optimizer="sgd", lr_mult=0.5)
    moves = _step(model, cnn.blocks, phase)
    by_block = {}
    for path, delta in moves.items():
        by_block.setdefault(_block_of(cnn.blocks, path), set()).update(np.unique(delta).tolist())
    top, below = cnn.blocks[-1].name, cnn.blocks[-2].name
    assert set(by_block) == {"head", top, below}
    # SGD without momentum: update = -lr * gradient, so the rates are read off exactly.
    assert np.allclose(sorted(by_block["head"]), [-0.1])
    assert np.allclose(sorted(by_block[top]), [-0.04])
    assert np.allclose(sorted(by_block[below]), [-0.02])  # exactly half as far


def test_layer_decay_is_timm_style_from_the_head(cnn):
    model = build_model(cnn, 3)
    phase = Phase("t", "all", lr=0.1, optimizer="sgd", layer_decay=0.5)
    moves = _step(model, cnn.blocks, phase)
    n = len(cnn.blocks)
    for path, delta in moves.items():
        name = _block_of(cnn.blocks, path)
        i = 0 if name == "head" else n - [b.name for b in cnn.blocks].index(name)
        assert np.allclose(delta, -0.1 * 0.5**i), (path, i)


def test_per_block_rates_hold_through_a_real_gradient(cnn, small_arrays):
    """The same layer, trained one step in two runs that differ only in its rate."""
    x, y = small_arrays
    updates, start = [], None
    for mult in (1.0, 0.5):
        keras.utils.set_random_seed(0)
        model = build_model(cnn, 3, HeadConfig((8,), dropout=0.0), name=f"m{mult}")
        if start is None:
            start = model.get_weights()
        model.set_weights(start)
        trainer = Trainer(model, cnn.blocks, verbose=0, log=lambda _: None)
        phase = Phase("t", "blocks:2", 1, lr=0.05, optimizer="sgd", lr_mult=mult)
        layer = backbone_of(model).get_layer("block2_conv")
        before = np.array(layer.kernel.numpy())
        trainer.fit([phase], array_pipeline(x[:8], y[:8], 8))
        updates.append(np.array(layer.kernel.numpy()) - before)
    assert np.abs(updates[0]).max() > 0
    np.testing.assert_allclose(updates[1], updates[0] / 2, rtol=1e-3, atol=1e-8)


def test_weight_decay_skips_batchnorm_and_biases(cnn):
    model = build_model(cnn, 3)
    phase = Phase("t", "blocks:1", lr=0.1, optimizer="sgd", weight_decay=0.5, train_bn=True)
    before = {v.path: np.array(v.numpy()) for v in model.weights}
    moves = _step(model, cnn.blocks, phase, grad=0.0)
    decayed = {p for p, d in moves.items() if np.any(d != 0)}
    bn = [p for p in moves if "_bn/" in p]
    biases = [p for p in moves if p.endswith("bias")]
    assert bn and biases  # BN gamma/beta and head biases do train in this phase
    assert not decayed & set(bn + biases)
    kernels = [p for p in moves if p.endswith("kernel")]
    assert set(kernels) == decayed
    for p in kernels:  # decoupled decay: w <- w - lr * wd * w
        np.testing.assert_allclose(moves[p], -0.1 * 0.5 * before[p], rtol=1e-5, atol=1e-8)


def test_l2sp_gradient_term_pulls_toward_the_pretrained_values(cnn):
    model = build_model(cnn, 3)
    anchors = optim.backbone_anchors(model)
    conv = backbone_of(model).get_layer("block3_conv").kernel
    conv.assign(conv.numpy() + 1.0)  # one unit away from w0 everywhere
    phase = Phase("t", "blocks:1", lr=0.1, optimizer="sgd", l2sp=0.5)
    freezing.apply(model, cnn.blocks, phase.trainable)
    opt = optim.make_optimizer(phase, model, cnn.blocks, anchors)
    assert isinstance(opt, regularizers.L2SPOptimizer)
    variables = model.trainable_variables
    opt.apply([keras.ops.zeros(v.shape) for v in variables], variables)
    # w <- w - lr * alpha * (w - w0) = w0 + 1 - 0.05
    np.testing.assert_allclose(conv.numpy() - anchors[id(conv)], 0.95, rtol=1e-6)
    head_kernel = model.get_layer("head_output").kernel
    assert id(head_kernel) not in anchors  # the new head is not pulled anywhere


def test_l2sp_keeps_the_backbone_closer_to_pretrained_than_weight_decay(cnn, small_arrays):
    x, y = small_arrays
    distances = {}
    for name, extra in {"none": {}, "wd": {"weight_decay": 0.5}, "l2sp": {"l2sp": 0.5}}.items():
        keras.utils.set_random_seed(0)
        model = build_model(cnn, 3, name=f"m_{name}")  # the backbone's layers are shared
        if name == "none":
            start = model.get_weights()
        model.set_weights(start)
        anchors = optim.backbone_anchors(model)
        trainer = Trainer(model, cnn.blocks, verbose=0, log=lambda _: None)
        phase = Phase("t", "all", 3, lr=0.2, optimizer="sgd", **extra)
        trainer.fit([phase], array_pipeline(x, y, 8))
        distances[name] = regularizers.distance(model, anchors)
    assert distances["none"] > 0
    assert distances["l2sp"] < distances["none"]
    assert distances["l2sp"] < distances["wd"]


def test_training_with_every_option_saves_a_plain_model(tmp_path, cnn_file, small_arrays):
    import graft

    run = graft.train(
        small_arrays,
        str(cnn_file),
        tmp_path / "run",
        cut="block3_pool",
        preprocess="unit",
        strategy="hybrid",
        epochs=2,
        finetune_epochs=3,
        unfreeze="blocks:2",
        lr_mult=0.5,
        schedule="cosine",
        warmup_epochs=1,
        weight_decay=1e-4,
        l2sp=0.01,
        batch_size=8,
        log=lambda _: None,
        verbose=0,
    )
    loaded = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert type(loaded.optimizer).__module__.startswith("keras.src.optimizers")
    assert not isinstance(loaded.optimizer, keras.optimizers.MultiOptimizer)
    tune = [r for r in run.history if r["phase"] == "finetune"]
    # cosine with 1 warm-up epoch over 3 epochs: factors 1, 1, 0.5
    np.testing.assert_allclose([r["lr"] for r in tune], [1e-5, 1e-5, 0.5e-5], rtol=1e-6)
    np.testing.assert_allclose([r["backbone_lr"] for r in tune], [1e-5, 1e-5, 0.5e-5])


def test_one_optimizer_table_for_every_configured_name():
    from graft.config.strategies import OPTIMIZERS

    assert set(optim.CLASSES) == set(OPTIMIZERS)
    assert optim.CLASSES["adamw"] is keras.optimizers.AdamW
    import graft.training

    assert graft.training.make_optimizer is optim.make_optimizer


def test_effective_backbone_lr_is_one_rule():
    assert Phase("h", "none", lr=0.1).effective_backbone_lr is None
    assert Phase("f", "blocks:1", lr=0.1).effective_backbone_lr == 0.1
    assert Phase("f", "blocks:1", lr=0.1, backbone_lr=0.01).effective_backbone_lr == 0.01
    assert Phase("f", "all", lr=0.1, layer_decay=0.5).effective_backbone_lr == 0.05

"""The freezing mechanism and the three classic strategies, checked weight by weight."""

from __future__ import annotations

import numpy as np
import pytest

import graft
from conftest import changed, snapshot
from graft.core import freezing
from graft.core.backbones import resolve
from graft.core.model import build_model
from graft.errors import SpecError


def _layer_paths(layers):
    return {v.path for layer in layers for v in layer.weights}


@pytest.fixture
def mobilenet():
    import keras

    # Seeded: the random weights (and so which ReLU6 units are dead on 24 images) must not
    # depend on which tests ran before in the same process.
    keras.utils.set_random_seed(0)
    return resolve("mobilenet_v2", weights="none", image_size=32, alpha=0.35)


def _fit(model, bb, plan, arrays):
    from graft.data.pipelines import array_pipeline
    from graft.training.trainer import Trainer

    x, y = arrays
    start = snapshot(model)
    result = Trainer(model, bb.blocks, verbose=0, log=lambda _: None).fit(
        plan, array_pipeline(x, y, 8, shuffle=True)
    )
    return start, snapshot(model), result


def test_feature_extraction_leaves_every_backbone_weight_bit_identical(small_arrays, mobilenet):
    model = build_model(mobilenet, 3)
    start, after, _ = _fit(model, mobilenet, graft.plan("feature", epochs=2), small_arrays)
    moved = changed(start, after)
    backbone = {v.path for v in model.get_layer("backbone").weights}
    assert any("moving_mean" in p for p in backbone)  # BN statistics are part of the check
    assert not moved & backbone, f"frozen backbone weights changed: {sorted(moved & backbone)[:5]}"
    head = {
        v.path for layer in model.layers if layer.name.startswith("head_") for v in layer.weights
    }
    assert head and head <= moved, "every head weight must have trained"


@pytest.mark.parametrize("spec", ["blocks:2", "layers:12", "from:block_15_expand"])
def test_finetune_changes_exactly_the_selected_layers(small_arrays, mobilenet, spec):
    model = build_model(mobilenet, 3)
    backbone = model.get_layer("backbone")
    selected = freezing.select(backbone, mobilenet.blocks, spec)
    start, after, _ = _fit(
        model,
        mobilenet,
        graft.plan("finetune", epochs=2, unfreeze=spec, finetune_lr=1e-3),
        small_arrays,
    )
    moved = changed(start, after)
    bb_paths = {v.path for v in backbone.weights}
    bn_paths = {
        v.path
        for layer in backbone._flatten_layers()
        if "BatchNorm" in type(layer).__name__
        for v in layer.weights
    }
    expected = _layer_paths(selected) - bn_paths
    assert expected, "the spec must select trainable weights"
    trainable = {v.path for v in backbone.trainable_weights}
    assert trainable == expected, f"trainable: {sorted(trainable ^ expected)[:6]}"
    outside = (moved & bb_paths) - expected
    assert not outside, f"weights outside the selection moved: {sorted(outside)[:6]}"
    # Every selected weight trains, except one whose gradient is exactly zero on this tiny
    # batch (a random-init ReLU6 can be dead for all 24 images): at most one such.
    assert len(expected - moved) <= 1, f"selected but unchanged: {sorted(expected - moved)}"
    assert not moved & bn_paths, "frozen BN statistics (and gamma/beta) must not move"


def test_train_bn_lets_batchnorm_statistics_move(small_arrays, mobilenet):
    model = build_model(mobilenet, 3)
    start, after, _ = _fit(
        model,
        mobilenet,
        graft.plan("finetune", epochs=1, unfreeze="blocks:1", train_bn=True),
        small_arrays,
    )
    moved = changed(start, after)
    assert any(p.startswith("Conv_1_bn/") and "moving_mean" in p for p in moved)


def test_hybrid_head_first_then_the_top(small_arrays, mobilenet):
    x, y = small_arrays
    model = build_model(mobilenet, 3)
    bb_paths = {v.path for v in model.get_layer("backbone").weights}
    plan = graft.plan("hybrid", epochs=1, finetune_epochs=1, unfreeze="blocks:1", finetune_lr=1e-3)
    start, mid, r1 = _fit(model, mobilenet, plan[:1], small_arrays)
    assert not changed(start, mid) & bb_paths
    _, end, r2 = _fit(model, mobilenet, plan[1:], small_arrays)
    moved = changed(mid, end) & bb_paths
    top = _layer_paths(mobilenet.blocks[-1].layers)
    assert moved and moved <= top
    assert r1.phases[0].report.backbone_trainable_params == 0
    assert r2.phases[0].report.backbone_trainable_params == sum(
        int(np.prod(v.shape))
        for layer in mobilenet.blocks[-1].layers
        for v in layer.trainable_weights
    )


def test_hybrid_counts_in_metrics_json(tmp_path, digits_folder):
    run = graft.train(
        digits_folder,
        "mobilenet_v2",
        tmp_path / "run",
        weights="none",
        image_size=32,
        alpha=0.35,
        strategy="hybrid",
        epochs=1,
        finetune_epochs=1,
        unfreeze="blocks:2",
        batch_size=8,
        verbose=0,
        log=lambda _: None,
    )
    import json

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    head, fine = metrics["phases"]
    assert head["backbone_trainable_params"] == 0
    assert head["trainable_blocks"] == []
    assert fine["trainable_blocks"] == ["block_16", "top"]
    total = run.model.count_params()
    for phase in (head, fine):
        assert phase["trainable_params"] + phase["frozen_params"] == total
    assert fine["trainable_params"] > head["trainable_params"]


def test_nested_user_model_freezes_and_unfreezes_correctly(small_arrays, nested_file):
    bb = resolve(str(nested_file))
    # Nested models are expanded: blocks:N and from: reach inside them.
    assert [b.name for b in bb.blocks] == [
        "stem_conv",
        "middle/inner",
        "middle/middle_conv",
        "top_conv",
    ]
    model = build_model(bb, 3)
    backbone = model.get_layer("backbone")
    middle = backbone.get_layer("middle")

    def paths(layer):
        return {v.path for v in layer.weights}

    # Feature extraction: nothing in any nesting level moves.
    start, after, _ = _fit(model, bb, graft.plan("feature", epochs=1), small_arrays)
    assert not changed(start, after) & paths(backbone)
    # blocks:2 is the middle model's own conv and the top conv, not the inner model.
    start, after, result = _fit(
        model,
        bb,
        graft.plan("finetune", epochs=1, unfreeze="blocks:2", finetune_lr=1e-2),
        small_arrays,
    )
    moved = changed(start, after) & paths(backbone)
    assert moved == paths(middle.get_layer("middle_conv")) | paths(backbone.get_layer("top_conv"))
    assert result.phases[0].report.trainable_blocks == ["middle/middle_conv", "top_conv"]
    # from: a conv two levels deep: it trains, its BN stays frozen, the stem does not move.
    start, after, result = _fit(
        model,
        bb,
        graft.plan("finetune", epochs=1, unfreeze="from:inner_conv", finetune_lr=1e-2),
        small_arrays,
    )
    moved = changed(start, after) & paths(backbone)
    inner = middle.get_layer("inner")
    assert moved == (
        paths(inner.get_layer("inner_conv"))
        | paths(middle.get_layer("middle_conv"))
        | paths(backbone.get_layer("top_conv"))
    )
    assert result.phases[0].report.trainable_blocks == [
        "middle/inner",
        "middle/middle_conv",
        "top_conv",
    ]


def test_outer_trainable_flag_cannot_silently_win(mobilenet):
    """The classic trap: a frozen outer model hides its unfrozen layers from the optimizer."""
    model = build_model(mobilenet, 3)
    backbone = model.get_layer("backbone")
    backbone.trainable = False  # what the classic recipe does first
    report = freezing.apply(model, mobilenet.blocks, "blocks:1")
    assert report.backbone_trainable_params > 0
    trainable = {id(v) for v in model.trainable_weights}
    assert all(
        id(v) in trainable for layer in mobilenet.blocks[-1].layers for v in layer.trainable_weights
    )


def test_spec_that_changes_nothing_is_an_error(mobilenet):
    model = build_model(mobilenet, 3)
    with pytest.raises(SpecError, match="would change nothing"):
        freezing.apply(model, mobilenet.blocks, "layers:1")  # out_relu has no weights
    with pytest.raises(SpecError, match="would change nothing"):
        freezing.apply(model, mobilenet.blocks, "layers:2")  # Conv_1_bn only, BN frozen
    assert freezing.apply(
        model, mobilenet.blocks, "layers:2", train_bn=True
    ).backbone_trainable_params


def test_classic_no_op_unfreeze_loop_is_caught(mobilenet):
    """The seed recipe's loop sets trainable=True on layers that were all trainable already."""
    layers = mobilenet.model.layers[-50:]
    assert all(layer.trainable for layer in layers)  # a fresh Keras model: all trainable
    with pytest.raises(SpecError, match="trainable already"):
        freezing.make_trainable(layers, train_bn=True)


@pytest.mark.parametrize("bad", ["blocks:0", "blocks", "layers:x", "top3", "from:"])
def test_malformed_specs(bad):
    with pytest.raises(SpecError):
        freezing.TrainableSpec.parse(bad)


def test_spec_beyond_the_backbone(mobilenet):
    model = build_model(mobilenet, 3)
    with pytest.raises(SpecError, match="more blocks"):
        freezing.apply(model, mobilenet.blocks, "blocks:99")
    with pytest.raises(graft.GraftError, match="no layer or block"):
        freezing.apply(model, mobilenet.blocks, "from:block_99_add")

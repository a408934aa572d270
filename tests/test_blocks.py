"""Blocks of models outside the registry, and cutting inside nested models."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import graft
from conftest import IMAGE, changed, snapshot
from graft.core import freezing
from graft.core.backbones import resolve
from graft.core.model import build_model
from graft.errors import SpecError, UnknownNameError


def mini_xception() -> keras.Model:
    """A stem and two residual modules (separable convs, strided pool, 1x1 shortcut)."""
    keras.utils.set_random_seed(3)
    layers = keras.layers
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for m, filters in ((1, 8), (2, 16)):
        r = layers.Conv2D(filters, 1, strides=2, padding="same", name=f"m{m}_short")(x)
        r = layers.BatchNormalization(name=f"m{m}_short_bn")(r)
        x = layers.SeparableConv2D(filters, 3, padding="same", name=f"m{m}_sep1")(x)
        x = layers.BatchNormalization(name=f"m{m}_bn1")(x)
        x = layers.Activation("relu", name=f"m{m}_relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same", name=f"m{m}_sep2")(x)
        x = layers.BatchNormalization(name=f"m{m}_bn2")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"m{m}_pool")(x)
        x = layers.Add(name=f"m{m}_add")([x, r])
    x = layers.Activation("relu", name="out_relu")(x)
    return keras.Model(inputs, x, name="mini_xception")


def _fit(model, bb, spec, arrays):
    from graft.data.pipelines import array_pipeline
    from graft.training.trainer import Trainer

    x, y = arrays
    start = snapshot(model)
    plan = graft.plan("finetune", epochs=1, unfreeze=spec, finetune_lr=1e-2)
    Trainer(model, bb.blocks, verbose=0, log=lambda _: None).fit(
        plan, array_pipeline(x, y, 8, shuffle=True)
    )
    return changed(start, snapshot(model))


def test_a_residual_module_is_one_block():
    bb = resolve(mini_xception())
    names = [[layer.name for layer in b.layers] for b in bb.blocks]
    assert [b.name for b in bb.blocks] == ["stem_conv", "m1_sep1", "m2_sep1"]
    assert names[-1][-2:] == ["m2_add", "out_relu"]  # the activation after the merge joins it
    assert {"m2_short", "m2_sep1", "m2_sep2"} <= set(names[-1])


def test_blocks_1_on_a_residual_model_trains_exactly_the_last_module(small_arrays):
    bb = resolve(mini_xception())
    model = build_model(bb, 3)
    backbone = model.get_layer("backbone")
    moved = _fit(model, bb, "blocks:1", small_arrays) & {v.path for v in backbone.weights}
    expected = {
        v.path
        for name in ("m2_short", "m2_sep1", "m2_sep2")
        for v in backbone.get_layer(name).weights
    }
    assert moved == expected  # bit-identical everywhere else, BN statistics included


def test_from_lists_each_candidate_once(nested_file):
    bb = resolve(str(nested_file))
    model = build_model(bb, 3)
    with pytest.raises(UnknownNameError) as info:
        freezing.apply(model, bb.blocks, "from:stem_con")
    text = str(info.value)
    assert text.count("'stem_conv'") == 1, text
    # a path or a bare name reaches inside the nested models
    for spec in ("from:middle/inner/inner_conv", "from:inner_conv", "from:middle/inner"):
        report = freezing.apply(model, bb.blocks, spec)
        assert report.trainable_layers == ["inner_conv", "middle_conv", "top_conv"]
    with pytest.raises(SpecError, match="more blocks"):
        freezing.apply(model, bb.blocks, "blocks:5")


def test_cut_inside_a_nested_model(nested_file, small_arrays):
    original = keras.saving.load_model(nested_file)
    bb = resolve(str(nested_file), cut="middle/inner/inner_conv")
    assert [b.name for b in bb.blocks] == ["stem_conv", "middle/inner"]
    x = small_arrays[0][:2].astype("float32")
    middle = original.get_layer("middle")
    expected = keras.Model(original.inputs, original.get_layer("stem_bn").output)(x)
    expected = middle.get_layer("inner").get_layer("inner_conv")(expected)
    np.testing.assert_array_equal(np.asarray(bb.model(x)), np.asarray(expected))
    # a nested model as the cut point, at any depth
    assert resolve(str(nested_file), cut="middle").model.output_shape == (None, 16, 16, 8)
    assert resolve(str(nested_file), cut="middle/inner").model.output_shape == (None, 16, 16, 8)


@pytest.mark.parametrize(
    "cut, message",
    [
        ("middle/innr", "in middle of .*Did you mean 'middle/inner'"),
        ("inner_conv", "Did you mean 'middle/inner/inner_conv'"),
        ("middle/middle_conv/x", "in middle/middle_conv"),
    ],
)
def test_unknown_cut_names_candidates_once(nested_file, cut, message):
    with pytest.raises(UnknownNameError, match=message) as info:
        resolve(str(nested_file), cut=cut)
    suggestion = str(info.value).split("Did you mean")[-1].split("?")[0]
    names = [n.strip(" '") for n in suggestion.split(",")]
    assert len(names) == len(set(names))


def test_inspect_shows_the_blocks_inside_nested_models(nested_file):
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "graft.cli", "inspect", str(nested_file), "--layers"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4 blocks" in done.stdout
    assert "middle/inner: middle/inner/inner_conv, middle/inner/inner_bn" in done.stdout


def conv1_bn1_cnn() -> keras.Model:
    """conv-BN-relu blocks named ``conv1``/``bn1``/``relu1``/``pool1``... and a head."""
    keras.utils.set_random_seed(4)
    layers = keras.layers
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = inputs
    for i, filters in enumerate((8, 16, 16), start=1):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(5, name="head")(x), name="conv1_bn1")


def block_table(bb) -> list[tuple[str, list[str]]]:
    return [(b.name, [layer.name for layer in b.layers]) for b in bb.blocks]


def prefix_up_to(full: list, cut_layers: set) -> list:
    """The uncut model's blocks, keeping only the layers the cut model has."""
    out = [(name, [x for x in layers if x in cut_layers]) for name, layers in full]
    return [(name, layers) for name, layers in out if layers]


@pytest.mark.parametrize(
    "make, cuts",
    [
        (conv1_bn1_cnn, ["conv1", "bn1", "pool1", "bn2", "relu2", "bn3", "gap"]),
        (
            lambda: keras.applications.MobileNetV2(
                input_shape=(IMAGE, IMAGE, 3), alpha=0.35, include_top=False, weights=None
            ),
            ["Conv1", "expanded_conv_project", "block_1_project", "block_4_add", "Conv_1_bn"],
        ),
    ],
    ids=["conv1-bn1-cnn", "mobilenet_v2"],
)
def test_blocks_of_a_cut_model_are_a_prefix_of_the_uncut_blocks(tmp_path, make, cuts):
    """Issue 23/24: the same model must not be split differently with and without a cut."""
    path = tmp_path / "model.keras"
    make().save(path)
    full = block_table(resolve(str(path)))
    block_of = {layer: name for name, layers in full for layer in layers}
    for name, layers in full:  # a BN sits in the block of the conv it normalizes
        for bn in (x for x in layers if x.startswith("bn") and x[2:].isdigit()):
            assert block_of[f"conv{bn[2:]}"] == name, full
    for cut in cuts:
        got = block_table(resolve(str(path), cut=cut))
        cut_layers = {x for _, layers in got for x in layers}
        assert got == prefix_up_to(full, cut_layers), cut
        # and a re-initialised cut (graft's scratch baseline) reads the same
        assert block_table(resolve(str(path), cut=cut, weights="none")) == got, cut

"""The backbone registry: coverage, blocks, preprocessing, weights loading, errors."""

from __future__ import annotations

import importlib
import inspect
import json

import keras
import numpy as np
import pytest

from graft.config import catalog
from graft.core import backbones
from graft.core.backbones import REGISTRY, load_backbone, resolve
from graft.core.model import build_model
from graft.core.preprocessing import preprocessing_layers
from graft.errors import GraftError, UnknownNameError, WeightsUnavailableError


def test_registry_covers_every_keras_application():
    constructors = {
        name
        for name, obj in vars(keras.applications).items()
        if inspect.isfunction(obj) and name[0].isupper()
    }
    assert constructors, "keras.applications exposes no constructors?"
    assert constructors == {spec.constructor for spec in REGISTRY.values()}


def _module_of(spec):
    module = getattr(keras.applications, spec.constructor).__module__.rsplit(".", 1)[-1]
    return importlib.import_module(f"keras.applications.{module}")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_preprocessing_matches_keras_preprocess_input(name):
    spec = REGISTRY[name]
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(2, 8, 8, 3)).astype("float32")
    expected = _module_of(spec).preprocess_input(raw.copy())
    got = raw
    for layer in preprocessing_layers(spec.preprocess):
        got = layer(got)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["vgg16", "mobilenet_v2", "densenet121", "efficientnet_b0"])
def test_assembled_model_starts_with_the_backbones_preprocessing(name):
    bb = load_backbone(
        name, weights=None, image_size=32, alpha=0.35 if name == "mobilenet_v2" else None
    )
    model = build_model(bb, 2)
    raw = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3)).astype("uint8")
    from graft.core.model import preprocess_layers

    # The layers between the model's input and the backbone, in the model's own order:
    between = model.layers[1 : model.layers.index(model.get_layer("backbone"))]
    assert between == preprocess_layers(model)
    got = raw.astype("float32")
    for layer in between:
        got = layer(got)
    expected = _module_of(REGISTRY[name]).preprocess_input(raw.astype("float32"))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-5)


EXPECTED_BLOCKS = {
    # name, image size: first blocks, last blocks, count
    "mobilenet_v2": (32, ["stem", "block_0", "block_1"], ["block_16", "top"], 19),
    "resnet50": (32, ["stem", "conv2_block1", "conv2_block2"], ["conv5_block3"], 17),
    "inception_v3": (75, ["mixed0", "mixed1"], ["mixed9", "mixed10"], 11),
    "efficientnet_b0": (32, ["stem", "block1a", "block2a"], ["block7a", "top"], 18),
    "vgg16": (32, ["block1", "block2"], ["block5"], 5),
    "densenet121": (32, ["stem", "conv2_block1"], ["conv5_block16", "top"], 63),
    "mobilenet": (32, ["stem", "block_1"], ["block_13"], 14),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_BLOCKS))
def test_blocks_are_the_natural_units(name):
    size, first, last, count = EXPECTED_BLOCKS[name]
    bb = load_backbone(
        name, weights=None, image_size=size, alpha=0.35 if name.startswith("mobilenet") else None
    )
    names = [b.name for b in bb.blocks]
    assert names[: len(first)] == first
    assert names[-len(last) :] == last
    assert len(names) == count == backbones.block_count(name)
    every = [layer for b in bb.blocks for layer in b.layers]
    assert len(every) == len(bb.model.layers) - 1  # every layer but the input, once
    assert sum(b.param_count for b in bb.blocks) == bb.model.count_params()


def test_block_count_table_covers_the_registry():
    table = json.loads(catalog.BLOCK_COUNTS_FILE.read_text())
    assert set(table) == set(REGISTRY)
    assert all(n >= 3 for n in table.values())


def test_fallback_blocks_for_a_flat_unknown_model():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="n1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    x = keras.layers.MaxPooling2D(name="p2")(x)
    from graft.core.blocks import group

    blocks = group(keras.Model(inputs, x))
    assert [(b.name, [layer.name for layer in b.layers]) for b in blocks] == [
        ("c1", ["c1", "n1", "r1"]),
        ("c2", ["c2", "p2"]),
    ]


def test_local_weights_file_loads_identically(tmp_path):
    keras.utils.set_random_seed(123)
    original = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35
    )
    path = tmp_path / "mobilenet_v2_notop.weights.h5"
    original.save_weights(path)
    keras.utils.set_random_seed(999)  # a different random init that the file must overwrite
    loaded = load_backbone("mobilenet_v2", weights=str(path), image_size=32, alpha=0.35)
    assert loaded.weights == str(path.resolve())
    assert len(original.weights) == len(loaded.model.weights)
    for a, b in zip(original.weights, loaded.model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_backbone("mobilenet_v2", weights=str(tmp_path / "nope.h5"), image_size=32)


def test_offline_imagenet_gives_one_actionable_line(monkeypatch, tmp_path):
    url = "https://storage.googleapis.com/x/mobilenet_v2_notop.h5"

    def offline(**kwargs):
        raise Exception(f"URL fetch failure on {url}: None -- [Errno -2] Name not known")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("mobilenet_v2", weights="imagenet", image_size=96)
    text = str(info.value)
    assert "\n" not in text and url in text and "weights=" in text and "--weights" not in text


def test_unknown_backbone_suggests_a_name():
    with pytest.raises(UnknownNameError, match="mobilenet_v2"):
        resolve("mobilenet_v22")


def test_image_size_below_minimum():
    with pytest.raises(GraftError, match="minimum of 75"):
        load_backbone("inception_v3", weights=None, image_size=64)


def test_user_model_cut_and_unknown_cut(cnn_file):
    bb = resolve(str(cnn_file), cut="block3_pool", preprocess="unit")
    assert bb.model.output_shape == (None, 4, 4, 16)
    assert [b.name for b in bb.blocks] == ["block1", "block2", "block3"]
    with pytest.raises(UnknownNameError, match="block3_pool"):
        resolve(str(cnn_file), cut="block3_poll")


def test_user_model_weights_none_reinitialises(cnn_file):
    kept = resolve(str(cnn_file))
    fresh = resolve(str(cnn_file), weights="none")
    a = kept.model.get_layer("block1_conv").kernel
    b = fresh.model.get_layer("block1_conv").kernel
    assert a.shape == b.shape and not np.array_equal(np.asarray(a), np.asarray(b))


def test_lambda_layer_backbone_is_refused_by_default(tmp_path):
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(GraftError, match="refused"):
        resolve(str(path))


def test_efficientnet_weights_file_gets_the_imagenet_stem_scaling(tmp_path, monkeypatch):
    """Same weight values from a file or through Keras's weights="imagenet" path: same model."""
    from keras.src.applications import efficientnet

    keras.utils.set_random_seed(5)
    source = keras.applications.EfficientNetB0(
        weights=None, include_top=False, input_shape=(32, 32, 3)
    )
    norm = next(x for x in source.layers if isinstance(x, keras.layers.Normalization))
    mean, variance, count = norm.get_weights()
    norm.set_weights([np.full_like(mean, 0.45), np.full_like(variance, 0.06), count])
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    source.save_weights(path)
    # Keras's own imagenet path, with its download answered by our file (no network).
    monkeypatch.setattr(efficientnet.file_utils, "get_file", lambda *a, **k: str(path))
    reference = keras.applications.EfficientNetB0(
        weights="imagenet", include_top=False, input_shape=(32, 32, 3)
    )
    mine = load_backbone("efficientnet_b0", weights=str(path), image_size=32).model

    def scaling(model):
        kinds = (keras.layers.Rescaling, keras.layers.Normalization)
        return [
            (type(x).__name__, np.asarray(x.scale).tolist() if hasattr(x, "scale") else None)
            for x in model.layers
            if isinstance(x, kinds)
        ]

    assert scaling(mine) == scaling(reference)
    assert len(scaling(reference)) == 3  # 1/255, Normalization, 1/sqrt(std)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(mine(images)), np.asarray(reference(images)), rtol=1e-5, atol=1e-5
    )

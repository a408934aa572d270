"""Input scaling inferred for a model file: its BN statistics say what it was trained on."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import yaml

import graft
from conftest import IMAGE, conv_block
from graft.core import scaling

SCALES = {
    "unit": lambda x: x / 255.0,
    "symmetric": lambda x: x / 127.5 - 1.0,
    # Keras's own preprocess_input of the families that use each scaling.
    "torch": lambda x: keras.applications.densenet.preprocess_input(x.copy()),
    "caffe": lambda x: keras.applications.resnet50.preprocess_input(x.copy()),
}


def pretrained_on(scale: str, digits) -> keras.Model:
    """A small CNN (Conv-BN blocks) pre-trained a little on digits scaled as ``scale``."""
    keras.utils.set_random_seed(0)
    x, y = digits
    inputs = keras.Input((IMAGE, IMAGE, 3))
    h = inputs
    for i, filters in enumerate((8, 16), start=1):
        h = conv_block(h, i, filters)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(SCALES[scale](x[:512].astype("float32")), y[:512], batch_size=64, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def models(digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scaled")
    paths = {}
    for scale in SCALES:
        paths[scale] = folder / f"{scale}.keras"
        pretrained_on(scale, digits).save(paths[scale])
    return paths


@pytest.mark.parametrize("scale", list(SCALES))
def test_bn_statistics_reveal_the_pretraining_scale(models, digits, scale):
    model = keras.saving.load_model(models[scale])
    evidence = scaling.infer(model, digits[0][600:700])
    assert evidence.choice == scale, evidence.line()
    assert "block1_bn" in evidence.line() and scale in evidence.line()


def test_weak_evidence_says_so():
    inputs = keras.Input((IMAGE, IMAGE, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    evidence = scaling.infer(model, np.zeros((2, IMAGE, IMAGE, 3), "uint8"))
    assert evidence.choice is None and "--preprocess" in evidence.line()
    rescaled = keras.Model(inputs, keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(0.5)(inputs)))
    assert scaling.infer(rescaled, np.zeros((2, IMAGE, IMAGE, 3), "uint8")).choice == "none"


def test_train_records_the_inferred_scaling_and_warns_on_a_wrong_one(
    models, digits_folder, tmp_path
):
    lines = []
    run = graft.train(
        digits_folder, str(models["symmetric"]), tmp_path / "run", cut="block2_pool",
        strategy="feature", epochs=1, batch_size=16, log=lines.append, verbose=0,
    )  # fmt: skip
    assert run.backbone.preprocess == "symmetric", lines
    assert any(line.startswith("Preprocess symmetric inferred") for line in lines), lines
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["resolved_backbone"]["preprocess"] == "symmetric"
    assert config["resolved_backbone"]["preprocess_evidence"]["choice"] == "symmetric"
    lines.clear()
    graft.train(
        digits_folder, str(models["symmetric"]), cut="block2_pool", preprocess="none",
        strategy="feature", epochs=1, batch_size=16, log=lines.append, verbose=0,
    )  # fmt: skip
    warnings = [line for line in lines if line.startswith("Warning: preprocess=none")]
    assert len(warnings) == 1 and "symmetric" in warnings[0], lines

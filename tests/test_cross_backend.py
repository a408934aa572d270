"""A grafted model saved on one Keras backend loads on another with the same predictions.

Each side runs in its own interpreter: the one of this test run for its own backend, the
others from ``GRAFT_TEST_PYTHON_TENSORFLOW``, ``GRAFT_TEST_PYTHON_JAX`` and
``GRAFT_TEST_PYTHON_TORCH`` (CI's ``.venv``, ``.venv-jax`` and ``.venv-torch``; a pair
whose interpreter is not set, or cannot import its backend, is skipped). The saving side
builds a graft model (a tiny "pre-trained" CNN cut at ``block3_pool``, graft's head) with
graft's own assembly API, trains it a step so no weight is at its initial value, and saves
``model.keras`` with its predictions on fixed inputs. The loading side loads it with graft's
loader and with plain ``keras.saving.load_model``, exports it with ``graft export --format
keras`` (the CLI's path, whose own parity check must pass), and loads with graft the same
model saved by Keras's own ``model.save``: every prediction must match within 1e-4.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.backend

BACKEND = keras.backend.backend()
BACKENDS = ("tensorflow", "jax", "torch")
ATOL = 1e-4

#: Builds, trains one step, saves; argv: out folder.
_SAVE = r"""
import os, sys
import numpy as np
import keras
from graft.core.loaders import from_model
from graft.core.model import HeadConfig, build_model
from graft.runs import files

out = sys.argv[1]
keras.utils.set_random_seed(3)
inputs = keras.Input((32, 32, 3))
x = inputs
for i, filters in enumerate((8, 16), start=1):
    x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block{i}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
    x = keras.layers.ReLU(name=f"block{i}_relu")(x)
    x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
cnn = keras.Model(inputs, keras.layers.Dense(5, name="old_head")(x), name="tiny_cnn")
for layer in cnn.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
        n = layer.moving_mean.shape[0]
        layer.moving_mean.assign(np.linspace(-0.5, 0.5, n).astype("float32"))
        layer.moving_variance.assign(np.linspace(0.5, 2.0, n).astype("float32"))
bb = from_model(cnn, cut="block2_pool", preprocess="caffe")
model = build_model(bb, 3, HeadConfig(hidden=(8,), dropout=0.0))
model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
rng = np.random.default_rng(0)
images = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
model.fit(images, np.arange(16) % 3, batch_size=8, epochs=1, verbose=0, shuffle=False)
files.save_model(model, os.path.join(out, "model.keras"))  # how graft ships a run's model
model.save(os.path.join(out, "raw.keras"))  # Keras's own save
np.save(os.path.join(out, "predictions.npy"), model.predict_on_batch(images))
np.save(os.path.join(out, "images.npy"), images)
print(keras.backend.backend())
"""

#: Loads with graft and with Keras, exports with the CLI, predicts with each; argv: model,
#: images, out.
_LOAD = r"""
import sys
import numpy as np
import keras
from graft.cli.main import main
from graft.runs import model_io

model_file, images, out = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
model, _ = model_io.load(model_file)
np.save(out + "/loaded.npy", model.predict_on_batch(images))
plain = keras.saving.load_model(model_file)  # graft's file loads without graft too
np.save(out + "/keras.npy", plain.predict_on_batch(images))
raw, _ = model_io.load(model_file.replace("model.keras", "raw.keras"))
np.save(out + "/raw.npy", raw.predict_on_batch(images))
code = main(["export", model_file, "--format", "keras", "-o", out + "/exported.keras"])
assert code == 0, code
exported, _ = model_io.load(out + "/exported.keras")
np.save(out + "/exported.npy", exported.predict_on_batch(images))
print(keras.backend.backend())
"""


def _interpreter(backend: str) -> str:
    """The Python that runs ``backend`` here (skips the test when there is none)."""
    if backend == BACKEND:
        return sys.executable
    python = os.environ.get(f"GRAFT_TEST_PYTHON_{backend.upper()}")
    if not python:
        pytest.skip(f"GRAFT_TEST_PYTHON_{backend.upper()} is not set (no {backend} venv)")
    if not _imports(python, backend):
        pytest.skip(f"{python} cannot import {backend}")
    return python


@functools.cache
def _imports(python: str, backend: str) -> bool:
    try:
        done = subprocess.run([python, "-c", f"import {backend}"], capture_output=True, timeout=120)
    except OSError:
        return False
    return done.returncode == 0


def _run(python: str, backend: str, script: str, *args) -> None:
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONWARNINGS": "ignore",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    done = subprocess.run(
        [python, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == backend, done.stdout


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """backend -> the folder of the model it saved (made once per backend)."""
    folders = {}

    def get(backend: str):
        if backend not in folders:
            python = _interpreter(backend)
            out = tmp_path_factory.mktemp(f"saved-{backend}")
            _run(python, backend, _SAVE, out)
            folders[backend] = out
        return folders[backend]

    return get


PAIRS = [(a, b) for a in BACKENDS for b in BACKENDS if a != b]


@pytest.mark.parametrize("source, target", PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def test_a_model_saved_on_one_backend_predicts_the_same_on_another(source, target, saved, tmp_path):
    if BACKEND not in (source, target):
        pytest.skip(f"run from the {source} or the {target} venv")  # each pair runs once
    target_python = _interpreter(target)
    folder = saved(source)
    _run(target_python, target, _LOAD, folder / "model.keras", folder / "images.npy", tmp_path)
    expected = np.load(folder / "predictions.npy")
    assert expected.shape == (16, 3) and np.ptp(expected) > 1e-3  # a model that discriminates
    for name in ("loaded", "exported", "keras", "raw"):
        got = np.load(tmp_path / f"{name}.npy")
        diff = float(np.max(np.abs(got - expected)))
        assert diff <= ATOL, json.dumps({"source": source, "target": target, name: diff})

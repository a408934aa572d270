"""Shared fixtures: small real data (scikit-learn digits) and small "pre-trained" models.

Nothing here touches the network. Models are tiny so the whole suite runs in minutes
on two CPU cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if "GRAFT_CACHE" not in os.environ:  # never read or fill the user's own caches
    import tempfile

    os.environ["GRAFT_CACHE"] = tempfile.mkdtemp(prefix="graft-test-cache-")

import importlib.util  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from graft import _quiet  # noqa: E402

_quiet.import_backend()

import keras  # noqa: E402

#: Without TensorFlow (CI's backend job: ``.[jax,test-neutral]``, ``-m backend``), test modules
#: that import it at the top cannot even be collected; they hold no ``backend`` tests.
if importlib.util.find_spec("tensorflow") is None:
    collect_ignore = [
        path.name
        for path in Path(__file__).parent.glob("test_*.py")
        if re.search(r"^(import|from) tensorflow\b", path.read_text("utf-8"), re.M)
    ]

IMAGE = 32

# The smallest registry model for CLI tests: MobileNetV2 x0.35 at 32 px, random weights.
SMALL_CLI = [
    "--backbone",
    "mobilenet_v2",
    "--weights",
    "none",
    "--alpha",
    "0.35",
    "--image-size",
    "32",
    "--batch-size",
    "8",
]
# ... and one quick feature-extraction epoch.
QUICK_CLI = [*SMALL_CLI, "--strategy", "feature", "--epochs", "1"]


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits as 32x32 RGB uint8 images and labels."""
    from graft.api.demo import digits_rgb

    return digits_rgb()


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory, digits):
    """Digits 5, 6 and 7 written as PNG class folders: 12 images per class."""
    from graft.api.demo import write_folder

    x, y = digits
    root = tmp_path_factory.mktemp("digits") / "train"
    idx = np.concatenate([np.flatnonzero(y == c)[:12] for c in (5, 6, 7)])
    return write_folder(root, x[idx], y[idx], {5: "five", 6: "six", 7: "seven"})


@pytest.fixture
def small_arrays(digits):
    """24 images of 3 classes (digits 5-7) as arrays with labels 0..2."""
    x, y = digits
    idx = np.concatenate([np.flatnonzero(y == c)[:8] for c in (5, 6, 7)])
    return x[idx], (y[idx] - 5).astype("int32")


def conv_block(x, i, filters):
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.5, name=f"block{i}_bn")(x)
    x = keras.layers.ReLU(name=f"block{i}_relu")(x)
    return keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)


def make_cnn(seed: int = 0, name: str = "tiny_cnn") -> keras.Model:
    """A 3-block CNN with BN and a 5-class head, with non-trivial BN statistics."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = inputs
    for i, filters in enumerate((8, 16, 16), start=1):
        x = conv_block(x, i, filters)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="old_head")(x)
    model = keras.Model(inputs, outputs, name=name)
    # Give the BN layers statistics that are not the initial 0/1, as pre-training would.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.linspace(-0.5, 0.5, n).astype("float32"))
            layer.moving_variance.assign(np.linspace(0.5, 2.0, n).astype("float32"))
    return model


@pytest.fixture(scope="session")
def cnn_file(tmp_path_factory):
    """A small 'pre-trained' CNN saved as .keras (cut at block3_pool to drop its head)."""
    path = tmp_path_factory.mktemp("models") / "cnn.keras"
    make_cnn().save(path)
    return path


def one_error_line(capsys) -> str:
    """The one line a user's mistake prints on stderr (no traceback, nothing else)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def history_rows(run_dir) -> list[dict]:
    """A run's ``history.csv`` rows without their timings (what a resumed run must repeat)."""
    import csv

    with open(Path(run_dir) / "history.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def saved_weights(run_dir) -> list[np.ndarray]:
    """Every weight of a run's ``model.keras``, as NumPy arrays."""
    model = keras.saving.load_model(Path(run_dir) / "model.keras")
    return [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]


def stop_after(patch: pytest.MonkeyPatch, epoch: int) -> None:
    """Make the checkpointer act as if Ctrl-C came right after epoch ``epoch`` was saved
    (the run then raises ``graft.training.checkpoints.Interrupted``)."""
    from graft.training.checkpoints import Checkpointer

    original = Checkpointer.save

    def save(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.state.epoch == epoch:
            self.stop_signal = "SIGINT"

    patch.setattr(Checkpointer, "save", save)


@pytest.fixture(scope="session")
def caffe_run(tmp_path_factory, digits_folder, cnn_file):
    """A finished run whose model has caffe preprocessing: a frozen Dense on the channel
    axis in front of a nested backbone (raw 0-255 pixels in), the layout exporters must
    handle. Shared by the export tests (they only add exports to it)."""
    import graft

    out = tmp_path_factory.mktemp("export") / "run"
    graft.train(
        digits_folder, str(cnn_file), out, cut="block3_pool", preprocess="caffe",
        strategy="feature", epochs=3, lr=1e-2, batch_size=8, verbose=0, log=lambda _: None,
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def nested_file(tmp_path_factory):
    """A model inside a model inside a model, saved as .keras.

    outer: [stem (Conv+BN), middle (a model holding 'inner' (Conv+BN) and a Conv), top Conv]
    """
    keras.utils.set_random_seed(1)
    inner_in = keras.Input((16, 16, 8))
    x = keras.layers.Conv2D(8, 3, padding="same", name="inner_conv")(inner_in)
    x = keras.layers.BatchNormalization(name="inner_bn")(x)
    inner = keras.Model(inner_in, x, name="inner")
    mid_in = keras.Input((16, 16, 8))
    x = inner(mid_in)
    x = keras.layers.Conv2D(8, 3, padding="same", name="middle_conv")(x)
    middle = keras.Model(mid_in, x, name="middle")
    outer_in = keras.Input((IMAGE, IMAGE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem_conv")(outer_in)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = middle(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="top_conv")(x)
    outer = keras.Model(outer_in, x, name="outer")
    for layer in outer._flatten_layers(recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.3, "float32"))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 1.7, "float32"))
    path = tmp_path_factory.mktemp("nested") / "nested.keras"
    outer.save(path)
    return path


def snapshot(model) -> dict:
    """Every variable of a model by its path, as numpy arrays."""
    return {v.path: np.array(v.numpy()) for v in model.weights}


def changed(before: dict, after: dict) -> set[str]:
    """Paths of variables whose values differ at all (bit for bit)."""
    return {k for k in before if not np.array_equal(before[k], after[k])}

"""``--augment`` off TensorFlow: the Keras layers of ``pipelines.augmentation`` applied to
training batches by the backend-neutral reader, with draws keyed by (seed, epoch, batch).

Marked ``backend``: CI runs them with ``KERAS_BACKEND=jax`` and ``torch`` in TensorFlow-free
venvs. The reader tests run on TensorFlow too (:class:`graft.data.neutral.Batches` works
on any backend); the exact-resume tests only off TensorFlow, where training reads with
the neutral reader (on TensorFlow augmentation runs in tf.data and its random stream is
not resumed: see the README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

import graft
from conftest import SMALL_CLI, history_rows, saved_weights, stop_after
from graft.data import neutral, pipelines
from graft.data.sources import LabelledFiles
from graft.training.checkpoints import Interrupted

pytestmark = pytest.mark.backend

BACKEND = keras.backend.backend()
QUIET = dict(verbose=0, log=lambda _: None)
TINY = dict(cut="block3_pool", batch_size=8, seed=4, dropout=0.3, lr=0.01, val_split=0.0)
RANDOM_LAYERS = (
    keras.layers.RandomFlip,
    keras.layers.RandomRotation,
    keras.layers.RandomZoom,
    keras.layers.RandomTranslation,
    keras.layers.RandomContrast,
)
off_tensorflow = pytest.mark.skipif(
    BACKEND == "tensorflow",
    reason="on TensorFlow training reads with tf.data, not the neutral reader",
)


def _images(count=12, size=24) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, size, size, 3)).astype("float32")


def _batches(x, level="light", seed=5, **kw):
    augment = pipelines.augmentation(level, seed)
    return neutral.array_batches(x, np.arange(len(x)) % 3, 4, seed=seed, augment=augment, **kw)


def _epoch(batches, epoch: int, order=None) -> list[np.ndarray]:
    batches.set_epoch(epoch)
    indices = range(len(batches)) if order is None else order
    got = {i: batches[i][0] for i in indices}
    return [got[i] for i in range(len(batches))]


# ---------------------------------------------------------------------------------------
# The reader
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["light", "standard"])
def test_augmented_batches_differ_from_plain_and_between_epochs(level):
    x = _images()
    augmented = _batches(x, level)  # not shuffled: the same rows in every epoch
    first, second = _epoch(augmented, 0), _epoch(augmented, 1)
    for index, (a, b) in enumerate(zip(first, second, strict=True)):
        plain = x[index * 4 : (index + 1) * 4]
        assert a.dtype == np.float32 and a.shape == plain.shape
        assert np.abs(a - plain).mean() > 1.0, index  # changed
        assert np.abs(a - b).mean() > 1.0, index  # another draw next epoch
        assert a.min() >= -1e-3 and a.max() <= 255 + 1e-3  # still raw 0-255 images
    # Images of one batch are transformed differently (per-image draws, not per batch).
    a = first[0]
    assert not np.allclose(a[0] - x[0], a[1] - x[1])
    # The layers are those of the one definition, on every backend.
    layers = pipelines.augmentation(level, 5).layers
    kinds = [type(layer).__name__ for layer in layers]
    assert kinds[:3] == ["RandomFlip", "RandomRotation", "RandomZoom"]
    assert len(kinds) == (3 if level == "light" else 5)


def test_the_draws_are_a_pure_function_of_seed_epoch_and_batch():
    """Two readers with their own layers, batches read in another order, the layers'
    state variables left as they were: bit-identical batches."""
    x = _images()
    one, two = _batches(x, shuffle=True), _batches(x, shuffle=True)
    before = [keras.ops.convert_to_numpy(v).copy() for v in one.augment.layers.variables]
    for epoch in (0, 3):
        a = _epoch(one, epoch)
        b = _epoch(two, epoch, order=[2, 0, 1])
        again = _epoch(one, epoch, order=[1, 2, 0])
        for p, q, r in zip(a, b, again, strict=True):
            np.testing.assert_array_equal(p, q)
            np.testing.assert_array_equal(p, r)
    after = [keras.ops.convert_to_numpy(v) for v in one.augment.layers.variables]
    for p, q in zip(before, after, strict=True):
        np.testing.assert_array_equal(p, q)
    other_seed = _batches(x, seed=6, shuffle=True)
    other_seed.set_epoch(0)
    one.set_epoch(0)
    assert not np.array_equal(one[0][1], other_seed[0][1]) or not np.array_equal(
        one[0][0], other_seed[0][0]
    )
    # A cached view draws from its own stream.
    view = neutral.Augment(one.augment.layers, 5, neutral.TRAINING + 1)
    rows = x[:4]
    assert not np.array_equal(view(rows, 0, 0), one.augment(rows, 0, 0))


def test_threads_and_worker_counts_give_the_same_batches(digits_folder):
    paths = sorted(str(p) for p in Path(digits_folder).rglob("*.png"))
    files = LabelledFiles(paths, [i % 3 for i in range(len(paths))], ["a", "b", "c"])
    size = (32, 32)

    def reader(workers: int, prefetch: bool):
        rows = neutral.FileRows(files.paths, size, 3, workers=workers)
        augment = neutral.Augment(pipelines.augmentation("standard", 2), 2)
        return neutral.Batches(rows, files.labels, 8, True, 2, prefetch, augment)

    want = _epoch(reader(1, False), 1)
    got = _epoch(reader(3, True), 1)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)
    # Several threads reading batches of one reader at once (the prefetch thread and the
    # consumer can both be augmenting): the same batches.
    shared = reader(2, True)
    shared.set_epoch(1)
    results: dict = {}

    def read(index):
        results[index] = shared[index][0]

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(shared))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, a in enumerate(want):
        np.testing.assert_array_equal(results[i], a)


def test_cycled_views_follow_the_run_epoch():
    x = np.arange(10, dtype="float32").reshape(10, 1)
    views = [neutral.array_batches(x + 100 * v, np.arange(10), 4, True, 3 + v) for v in (0, 1)]
    cycled = neutral.Cycled(views)
    assert len(cycled) == 3 and cycled.epoch_ordered
    for epoch in (0, 1, 2, 5):
        cycled.set_epoch(epoch)
        rows = np.concatenate([cycled[i][0][:, 0] for i in range(len(cycled))])
        assert set((rows // 100).astype(int)) == {epoch % 2}
        order = np.concatenate([cycled[i][1] for i in range(len(cycled))])
        np.testing.assert_array_equal(order, graft.data.order.epoch_order(10, 3 + epoch % 2, epoch))


# ---------------------------------------------------------------------------------------
# graft train --augment
# ---------------------------------------------------------------------------------------


def _cli(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}
    src = str(Path(graft.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "graft.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_cli_train_with_augment_from_another_folder(digits_folder, tmp_path):
    """Relative paths from another working directory; the saved model holds no random
    layer (augmentation never reaches inference) and evaluates and predicts."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = os.path.relpath(digits_folder, elsewhere)
    args = ["train", data, *SMALL_CLI, "--strategy", "feature", "--epochs", "2"]
    done = _cli(*args, "--augment", "light", "--val-split", "0.25", "--out", "run", cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Feature cache off: augmentation" in done.stdout + done.stderr
    out = elsewhere / "run"
    assert (out / "model.keras").is_file() and (out / "report.html").is_file()
    config = (out / "config.yaml").read_text()
    assert "augment: light" in config and f"backend: {BACKEND}" in config
    model = keras.saving.load_model(out / "model.keras")
    assert not [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, RANDOM_LAYERS)
    ]
    done = _cli("evaluate", "run", data, cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "five" in done.stdout
    done = _cli("predict", "run", Path(data) / "five", cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len([line for line in done.stdout.splitlines() if ".png," in line]) == 12


@off_tensorflow
def test_only_training_batches_are_augmented(digits_folder, cnn_file, tmp_path, monkeypatch):
    """Every reader the run makes with an augmentation is the shuffled training reader;
    validation (and everything graft predicts on) reads plain images."""
    made: list[tuple[int, bool, bool]] = []
    original = neutral.Batches.__init__

    def spy(self, rows, labels, *args, **kwargs):
        original(self, rows, labels, *args, **kwargs)
        made.append((len(self.labels), self.shuffle, self.augment is not None))

    monkeypatch.setattr(neutral.Batches, "__init__", spy)
    graft.train(
        digits_folder, str(cnn_file), tmp_path / "run", strategy="finetune", epochs=1,
        augment="light", **{**TINY, "val_split": 0.25}, **QUIET,
    )  # fmt: skip
    augmented = [m for m in made if m[2]]
    assert augmented and all(m[1] for m in augmented), made
    assert len({m[0] for m in augmented}) == 1
    train_rows = augmented[0][0]
    assert any(not m[2] and m[0] == 36 - train_rows for m in made), made  # validation


# ---------------------------------------------------------------------------------------
# Exact resume
# ---------------------------------------------------------------------------------------


@off_tensorflow
@pytest.mark.parametrize(
    ("views", "stop"), [(0, 3), (2, 1)], ids=["images", "cached-views-inside-the-cycle"]
)
def test_killed_augmented_run_resumes_exactly(
    views, stop, digits_folder, cnn_file, tmp_path, monkeypatch
):
    """Stopped after epoch ``stop``, resumed: the same history and weights, bit for bit,
    as the uninterrupted run. Augmented images (fine-tuning reads them), and K=2 cached
    augmented views stopped inside the cached phase's view cycle."""
    settings = dict(
        TINY, strategy="hybrid", epochs=2, finetune_epochs=2, finetune_lr=0.005,
        augment="light", cache_views=views,
    )  # fmt: skip
    ref = tmp_path / "reference"
    lines: list[str] = []
    cache = str(tmp_path / "cache-reference")  # each run computes its own views
    graft.train(
        digits_folder, str(cnn_file), ref, **settings, cache_dir=cache, verbose=0,
        log=lines.append,
    )  # fmt: skip
    if views:
        assert any("augmented view 2/2" in line for line in lines), lines
        assert any("on cached features" in line for line in lines), lines
    run = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        stop_after(patch, stop)
        with pytest.raises(Interrupted):
            cache = str(tmp_path / "cache-resumed")
            graft.train(digits_folder, str(cnn_file), run, **settings, cache_dir=cache, **QUIET)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["epoch"] == stop
    graft.train(digits_folder, resume=run, **QUIET)
    got, want = history_rows(run), history_rows(ref)
    assert [r["epoch"] for r in got] == ["1", "2", "3", "4"]
    assert got == want
    for a, b in zip(saved_weights(run), saved_weights(ref), strict=True):
        np.testing.assert_array_equal(a, b)

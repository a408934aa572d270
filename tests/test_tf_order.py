"""The TensorFlow readers visit rows in graft's epoch order (graft.data.order).

Epoch ``e`` of every shuffled ``tf.data`` reader (image files, in-memory arrays, cache
entries, cached augmented views) follows ``epoch_order(rows, seed, e)``: the rows the
backend-neutral reader visits in that epoch, in the same order. The trainer fits on the
stream of epochs a fit runs (``graft.training.feed.epoch_stream``), so what Keras sees in
epoch ``e`` depends on ``e`` alone, never on how many iterators it made: a fit started at
epoch ``k`` (a resumed run) sees what epochs ``k..`` of an uninterrupted fit saw.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from graft.data import neutral, pipelines
from graft.data.order import epoch_order
from graft.training import feed
from graft.training.store import Store

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data")

ROWS, BATCH, SEED = 11, 4, 7  # 11 rows in batches of 4: the last batch of an epoch is partial


def _epochs(dataset, epochs: int) -> list[np.ndarray]:
    """The label (row id) order of ``epochs`` passes over ``dataset``, one per pass."""
    return [np.concatenate([np.asarray(y) for _, y in dataset]) for _ in range(epochs)]


def _stream(dataset, first: int, epochs: int) -> list[np.ndarray]:
    """Epochs ``first..first+epochs-1`` of the trainer's stream of ``dataset``."""
    stream, steps = feed.epoch_stream(dataset, None, first)
    assert steps == -(-ROWS // BATCH)
    batches = iter(stream)
    orders = []
    for _ in range(epochs):
        orders.append(np.concatenate([np.asarray(next(batches)[1]) for _ in range(steps)]))
    return orders


def _neutral_rows(x, epoch: int) -> np.ndarray:
    reader = neutral.array_batches(x, np.arange(len(x)), BATCH, shuffle=True, seed=SEED)
    reader.set_epoch(epoch)
    return np.concatenate([reader[i][0] for i in range(len(reader))])


def test_array_reader_rows_follow_epoch_order_and_equal_the_neutral_reader():
    x = np.arange(ROWS * 3, dtype="float32").reshape(ROWS, 3)  # each row names itself
    ds = pipelines.array_pipeline(x, np.arange(ROWS), BATCH, shuffle=True, seed=SEED)
    assert ds.cardinality() == 3
    for e, rows in enumerate(_stream(ds, 0, 3)):
        want = epoch_order(ROWS, SEED, e)
        np.testing.assert_array_equal(rows, want)
    stream, _ = feed.epoch_stream(ds, None, 0)
    got = np.concatenate([np.asarray(b[0]) for b in stream.take(9)])  # rows, not labels
    for e in range(3):
        tf_rows = got[e * ROWS : (e + 1) * ROWS]
        np.testing.assert_array_equal(tf_rows, x[epoch_order(ROWS, SEED, e)])
        np.testing.assert_array_equal(tf_rows, _neutral_rows(x, e))
    # Iterated on its own (a loop, or Keras's fit without graft), pass k is epoch k.
    for e, rows in enumerate(_epochs(ds, 3)):
        np.testing.assert_array_equal(rows, epoch_order(ROWS, SEED, e))
    assert len({tuple(r) for r in _stream(ds, 0, 3)}) == 3  # the order does change


def test_a_stream_started_at_epoch_k_is_the_uninterrupted_one_from_k():
    x = np.zeros((ROWS, 2), "float32")
    ds = pipelines.array_pipeline(x, np.arange(ROWS), BATCH, shuffle=True, seed=SEED)
    whole = _stream(ds, 0, 4)
    for k in (1, 3):
        for a, b in zip(_stream(ds, k, 4 - k), whole[k:], strict=True):
            np.testing.assert_array_equal(a, b)


def test_file_reader_decodes_the_files_of_epoch_order(digits_folder):
    from graft.data.sources import scan_folder

    files = scan_folder(digits_folder)
    n = len(files.paths)
    ds = pipelines.pipeline(files, (16, 16), 3, 8, shuffle=True, seed=SEED)
    plain = pipelines.pipeline(files, (16, 16), 3, 8)  # evaluation: the file order
    images = np.concatenate([np.asarray(x) for x, _ in plain])
    stream, steps = feed.epoch_stream(ds, None, 0)
    batches = iter(stream)
    for e in range(3):
        got = np.concatenate([np.asarray(next(batches)[0]) for _ in range(steps)])
        order = epoch_order(n, SEED, e)
        np.testing.assert_array_equal(got, images[order])  # rows, decoded the same way
    labels = np.concatenate([np.asarray(y) for _, y in plain])
    np.testing.assert_array_equal(labels, np.asarray(files.labels))


def test_multi_label_rows_keep_their_label_vectors():
    y = np.eye(ROWS, dtype="float32")[:, :5] + np.eye(ROWS, 5, 1, dtype="float32")
    x = np.arange(ROWS, dtype="float32").reshape(ROWS, 1)
    ds = pipelines.array_pipeline(x, y, BATCH, shuffle=True, seed=SEED)
    stream, _ = feed.epoch_stream(ds, None, 2)
    first = list(stream.take(3))
    rows = np.concatenate([np.asarray(b[0])[:, 0] for b in first]).astype(int)
    np.testing.assert_array_equal(rows, epoch_order(ROWS, SEED, 2))
    np.testing.assert_array_equal(np.concatenate([np.asarray(b[1]) for b in first]), y[rows])


def test_cache_entries_and_their_views_follow_epoch_order(tmp_path):
    store = Store(tmp_path)
    views = []
    for v in range(2):  # two augmented views of the same rows: row r of view v is 100v + r
        values = (np.arange(ROWS, dtype="float32") + 100 * v).reshape(ROWS, 1)
        views.append(store.write(f"view{v}", ROWS, [values[:5], values[5:]]))
    labels = np.arange(ROWS)
    one = feed.entry_dataset(views[0], labels, BATCH, shuffle=True, seed=SEED)
    both = feed.entry_dataset(views, labels, BATCH, shuffle=True, seed=SEED)
    for ds, count in ((one, 1), (both, 2)):
        stream, steps = feed.epoch_stream(ds, None, 0)
        batches = iter(stream)
        for e in range(3):
            got = [next(batches) for _ in range(steps)]
            rows = np.concatenate([np.asarray(x)[:, 0] for x, _ in got])
            view = e % count  # view v's order is drawn from (seed + v, e), as off TensorFlow
            order = epoch_order(ROWS, SEED + view, e)
            np.testing.assert_array_equal(rows, order + 100 * view)
            np.testing.assert_array_equal(np.concatenate([np.asarray(y) for _, y in got]), order)
    plain = feed.entry_dataset(views[0], labels, BATCH)
    np.testing.assert_array_equal(np.concatenate([np.asarray(y) for _, y in plain]), labels)


class _Recording(keras.Model):
    """Records the labels (row ids) of every batch it trains on."""

    seen: list

    def train_step(self, data):
        import tensorflow as tf

        self.seen.append(np.asarray(data[1]).tolist())
        return {"loss": tf.constant(0.0)}


def _fit(ds, first: int, epochs: int, strategy=None) -> list[list[int]]:
    """What Keras's fit (as graft's trainer calls it) trains on, epoch by epoch."""
    import contextlib

    with strategy.scope() if strategy else contextlib.nullcontext():
        x = keras.Input((1,))
        model = _Recording(x, keras.layers.Dense(1)(x), name="recording")
        model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    model.seen = []
    train, steps = feed.epoch_stream(ds, None, first)
    model.fit(
        train, steps_per_epoch=steps, initial_epoch=first, epochs=epochs, verbose=0, shuffle=False
    )
    flat = [label for batch in model.seen for label in batch]
    return [flat[i : i + ROWS] for i in range(0, len(flat), ROWS)]


@pytest.mark.parametrize("strategy", [False, True], ids=["plain", "mirrored"])
def test_keras_fit_sees_epoch_order_and_a_resumed_fit_the_same(strategy):
    """Keras makes two iterators per epoch of a finite dataset (and peeks at one batch
    under a tf.distribute strategy): none of that moves graft's order any more."""
    import tensorflow as tf

    x = np.arange(ROWS, dtype="float32").reshape(ROWS, 1)
    ds = pipelines.array_pipeline(x, np.arange(ROWS), BATCH, shuffle=True, seed=SEED)
    make = (lambda: tf.distribute.MirroredStrategy(["/cpu:0"])) if strategy else (lambda: None)
    whole = _fit(ds, 0, 3, make())
    assert whole == [epoch_order(ROWS, SEED, e).tolist() for e in range(3)]
    assert _fit(ds, 1, 3, make()) == whole[1:]


# ---------------------------------------------------------------------------------------
# Resumed runs: only the epoch they continue from
# ---------------------------------------------------------------------------------------

QUIET = dict(verbose=0, log=lambda _: None)
TINY = dict(cut="block3_pool", batch_size=8, seed=4, dropout=0.3, lr=0.01)


def _saved(run_dir) -> list[np.ndarray]:
    model = keras.saving.load_model(run_dir / "model.keras")
    return [np.asarray(w) for w in model.weights]


def _rows(run_dir) -> list[dict]:
    import csv

    with open(run_dir / "history.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


@pytest.mark.parametrize(
    "settings,stop",
    [
        # The head on 2 cached augmented views (epoch e: view e mod 2), stopped mid-cycle.
        (dict(strategy="feature", epochs=4, augment="light", cache_views=2), 1),
        # The head on cached features, then fine-tuning on cached activations.
        (
            dict(
                strategy="hybrid",
                epochs=2,
                finetune_epochs=3,
                unfreeze="blocks:1",
                finetune_lr=0.005,
            ),
            3,
        ),
    ],
    ids=["cached-views", "activation-cache"],
)
def test_a_cache_backed_run_resumed_at_epoch_k_is_the_uninterrupted_run(
    settings, stop, digits_folder, cnn_file, tmp_path, monkeypatch
):
    import json

    import graft
    from conftest import stop_after
    from graft.training.checkpoints import Interrupted

    settings = dict(TINY, **settings, cache_dir=str(tmp_path / "cache"), val_split=0.2)
    ref = tmp_path / "reference"
    graft.train(digits_folder, str(cnn_file), ref, **settings, **QUIET)
    run = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        stop_after(patch, stop)
        with pytest.raises(Interrupted):
            graft.train(digits_folder, str(cnn_file), run, **settings, **QUIET)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == stop and "passes" not in state  # no reader state is kept
    graft.train(digits_folder, resume=run, **QUIET)
    got, want = _rows(run), _rows(ref)
    assert len(got) == len(want) > stop and got == want  # the same losses, bit for bit
    for a, b in zip(_saved(run), _saved(ref), strict=True):
        np.testing.assert_array_equal(a, b)

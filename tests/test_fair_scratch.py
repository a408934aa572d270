"""A fair scratch baseline: graft's scratch recipe scores within noise of plain Keras.

Same data (digits 5-9, 10 labelled images per class, the other 846 as test), same network
(the demo CNN, ``tests/plain_keras.py``), 40 epochs, batch 16, Adam 1e-3, inputs in [0, 1].
Without precise BN (BN statistics re-estimated after training) graft's scratch row trailed
plain Keras by 10-25 points: its moving statistics, accumulated on reshuffled batches while
the weights moved, do not match the final weights.
"""

from __future__ import annotations

import numpy as np
import pytest

import graft
from graft.api.compare import scratch_phase
from graft.runs.files import save_model
from plain_keras import build_cnn, digits_split, plain_keras_scratch

EPOCHS = 40


@pytest.fixture(scope="module")
def split():
    return digits_split(per_class=10, seed=0)


@pytest.fixture(scope="module")
def cnn_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("fair") / "cnn.keras"
    save_model(build_cnn(5), path)
    return path


def graft_scratch(split, cnn_path, seed: int, precise_bn: bool = True) -> float:
    xtr, ytr, xte, yte = split
    run = graft.train(
        (xtr, ytr), str(cnn_path), test=(xte, yte), cut="block3_relu", weights="none",
        phases=[scratch_phase(EPOCHS)], precise_bn=precise_bn, val_split=0.0, batch_size=16,
        preprocess="unit", head=(), dropout=0.0, seed=seed, log=lambda _: None, verbose=0,
    )  # fmt: skip
    return run.metrics["test_accuracy"]


def test_scratch_is_within_noise_of_plain_keras(split, cnn_path):
    plain = plain_keras_scratch(*split, seed=0, epochs=EPOCHS)
    ours = graft_scratch(split, cnn_path, seed=0)
    assert ours >= plain - 0.03, (ours, plain)


@pytest.mark.slow
def test_scratch_is_within_noise_of_plain_keras_over_seeds(split, cnn_path):
    seeds = (0, 1, 2)
    plain = np.mean([plain_keras_scratch(*split, seed=s, epochs=EPOCHS) for s in seeds])
    ours = [graft_scratch(split, cnn_path, seed=s) for s in seeds]
    assert np.mean(ours) >= plain - 0.03, (ours, plain)
    assert max(ours) - min(ours) <= 0.08, ours


def test_precise_bn_is_on_exactly_where_bn_trains():
    from graft.config.phase import Phase
    from graft.config.settings import TrainConfig

    assert Phase("a", "all", train_bn=True).uses_precise_bn
    assert not Phase("a", "none", train_bn=True).uses_precise_bn  # BN frozen with the backbone
    assert not Phase("a", "all").uses_precise_bn  # frozen BN keeps its statistics
    assert not Phase("a", "all", train_bn=True, precise_bn=False).uses_precise_bn
    assert Phase("a", "none", precise_bn=True).uses_precise_bn
    cfg = dict(backbone="m.keras", strategy="hybrid", train_bn=True)
    assert [p.uses_precise_bn for p in TrainConfig(**cfg).resolved_plan()] == [False, True]
    off = TrainConfig(**cfg, precise_bn=False).resolved_plan()
    assert [p.uses_precise_bn for p in off] == [False, False]
    custom = TrainConfig(backbone="m.keras", phases=[scratch_phase(3)], precise_bn=False)
    assert not custom.resolved_plan()[0].uses_precise_bn


def test_precise_bn_re_estimates_only_the_bn_layers_that_trained(small_arrays, cnn_file):
    """Frozen BN layers keep their pre-trained statistics; the ones that trained match the
    training images under the final weights (the log says how many)."""
    from conftest import snapshot

    lines = []
    run = graft.train(
        small_arrays, str(cnn_file), cut="block3_pool", strategy="finetune", unfreeze="blocks:1",
        train_bn=True, epochs=1, val_split=0.0, batch_size=8, log=lines.append, verbose=0,
        preprocess="none", pool="avg",  # raw images reach block3_bn, as computed below
    )  # fmt: skip
    assert "Precise BN: re-estimated the statistics of 1 BatchNorm layers" in "\n".join(lines)
    weights = snapshot(run.model)
    mean = next(v for k, v in weights.items() if "block3_bn" in k and "moving_mean" in k)
    frozen = next(v for k, v in weights.items() if "block1_bn" in k and "moving_mean" in k)
    np.testing.assert_array_equal(frozen, np.linspace(-0.5, 0.5, frozen.shape[0]).astype("float32"))
    # block3_bn's moving mean is the mean of its inputs over the 24 training images.
    import keras

    bb = run.backbone.model
    probe = keras.Model(bb.inputs[0], bb.get_layer("block3_bn").input)
    x = np.asarray(small_arrays[0], "float32")
    want = np.asarray(probe(x, training=False)).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(mean, want, rtol=1e-3, atol=1e-4)


def test_precise_bn_revalidates_the_last_epoch(small_arrays, cnn_file, tmp_path):
    """The phase's last val_accuracy was measured with the old BN statistics; after precise
    BN it is measured again, so metrics, history.csv and auto/compare rank the kept model."""
    import csv

    from graft.api import evaluate

    lines = []
    run = graft.train(
        small_arrays, str(cnn_file), tmp_path / "run", val=small_arrays, cut="block3_pool",
        weights="none", phases=[scratch_phase(2, lr=0.01)], batch_size=8, log=lines.append,
        verbose=0,
    )  # fmt: skip
    assert "val_accuracy now" in "\n".join(lines)
    again = evaluate(tmp_path / "run", small_arrays)
    # evaluate's metrics are rounded to 4 decimals (24 images: k/24 has more)
    assert run.metrics["val_accuracy"] == pytest.approx(again["accuracy"], abs=5e-5)
    with open(tmp_path / "run" / "history.csv", newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    assert float(last["val_accuracy"]) == pytest.approx(again["accuracy"], abs=5e-5)

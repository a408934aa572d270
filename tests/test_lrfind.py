"""The LR finder: an exponential sweep, a valley suggestion, files, and no side effects."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import snapshot
from graft.cli import main
from graft.config.strategies import Phase
from graft.core.backbones import resolve
from graft.core.model import build_model
from graft.data.pipelines import array_pipeline
from graft.training import lrfind
from graft.training.trainer import Trainer


@pytest.fixture
def cnn(cnn_file):
    return resolve(str(cnn_file), cut="block3_pool", preprocess="unit")


def test_valley_picks_a_point_inside_the_steepest_descent():
    lrs = np.geomspace(1e-6, 1, 100)
    losses = np.r_[np.full(30, 2.0), np.linspace(2.0, 0.5, 40), np.linspace(0.5, 5, 30)]
    losses[:30] += np.random.default_rng(0).normal(0, 0.01, 30)  # flat and noisy
    suggested = lrfind.valley(list(lrs), list(losses))
    i = int(np.argmin(np.abs(lrs - suggested)))
    assert 30 <= i < 70 and i < int(np.argmin(losses))


def test_sweep_restores_weights_and_writes_csv_and_plot(tmp_path, cnn, small_arrays):
    x, y = small_arrays
    model = build_model(cnn, 3)
    trainer = Trainer(model, cnn.blocks, verbose=0, log=lambda _: None)
    before = snapshot(model)
    phase = Phase("finetune", "blocks:1", lr=1e-3, backbone_lr=1e-4, lr_mult=0.5)
    found = lrfind.sweep(trainer, phase, array_pipeline(x, y, 8), 1e-5, 1.0, steps=30)
    assert snapshot(model).keys() == before.keys()
    assert all(np.array_equal(before[k], v) for k, v in snapshot(model).items())
    n = len(found.lrs)
    assert 5 <= n <= 30
    np.testing.assert_allclose(found.lrs, np.geomspace(1e-5, 1.0, 30)[:n], rtol=1e-6)
    assert found.lrs[0] <= found.suggestion <= found.lrs[-1]
    csv_path, png_path = found.write(tmp_path / "out")
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == n and float(rows[-1]["lr"]) == pytest.approx(found.lrs[-1])
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lr_auto_trains_with_the_suggestion(tmp_path, cnn_file, small_arrays):
    import graft

    run = graft.train(
        small_arrays,
        str(cnn_file),
        tmp_path / "run",
        cut="block3_pool",
        preprocess="unit",
        strategy="feature",
        lr="auto",
        epochs=1,
        batch_size=8,
        log=lambda _: None,
        verbose=0,
    )
    suggested = run.metrics["lr_find"]["suggestion"]
    assert 1e-7 <= suggested <= 10 and run.config.lr == suggested
    assert run.history[0]["lr"] == pytest.approx(suggested)
    assert (tmp_path / "run" / "lr_find.csv").is_file()
    assert (tmp_path / "run" / "lr_find.png").is_file()


def test_cli_lr_find_prints_a_suggestion(tmp_path, digits_folder, capsys):
    out = tmp_path / "lr"
    code = main(["lr-find", str(digits_folder), "--backbone", "mobilenet_v2", "--weights", "none",
                 "--alpha", "0.35", "--image-size", "32", "--batch-size", "8", "--steps", "12",
                 "--start-lr", "1e-4", "--end-lr", "1", "--out", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0 and "Suggested lr (valley):" in text
    rows = list(csv.DictReader((out / "lr_find.csv").open()))
    assert 1 <= len(rows) <= 12 and (out / "lr_find.png").is_file()
    assert main(["lr-find", str(digits_folder), "-b", "mobilenet_v2", "--out", str(out),
                 "--start-lr", "1", "--end-lr", "0.1"]) == 2  # fmt: skip

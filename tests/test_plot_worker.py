"""Plots drawn in a second process (graft.reporting.plot_worker): the same files as drawn
in-process, a failing or missing worker falls back to drawing here, and a real run really
draws its training curves in the other process."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import graft
from graft.reporting import plot_worker, plots
from graft.reporting.plot_worker import PlotWorker

HISTORY = [
    {"epoch": e, "phase": p, "loss": 1 / e, "val_loss": 1.2 / e, "accuracy": 0.1 * e,
     "val_accuracy": 0.09 * e, "lr": 1e-3, "backbone_lr": ""}
    for e, p in ((1, "head"), (2, "head"), (3, "finetune"))
]  # fmt: skip
METRICS = {
    "images": 6,
    "task": "classification",
    "confusion_matrix": [[2, 1], [0, 3]],
    "per_class": {
        "a": {"precision": 1.0, "recall": 0.67, "f1": 0.8, "support": 3},
        "b": {"precision": 0.75, "recall": 1.0, "f1": 0.86, "support": 3},
    },
}


def _draw(folder, worker):
    return plots.write_all(folder, HISTORY, METRICS, ["a", "b"], None, worker)


def test_worker_writes_the_same_files_as_drawing_here(tmp_path):
    here = _draw(tmp_path / "here", None)
    there = _draw(tmp_path / "there", PlotWorker())
    assert sorted(here) == sorted(there) == ["confusion", "curves", "f1"]
    for key in here:
        assert there[key].read_bytes() == here[key].read_bytes(), key


def test_curves_submitted_early_are_not_drawn_twice(tmp_path, monkeypatch):
    worker = PlotWorker()
    path = tmp_path / plots.PLOTS_DIR / plots.CURVES
    worker.submit("training_curves", HISTORY, path)
    submitted, submit = [], worker.submit
    monkeypatch.setattr(
        worker, "submit", lambda name, *a: (submitted.append(name), submit(name, *a))
    )
    written = _draw(tmp_path, worker)
    assert submitted == ["confusion_matrix", "per_class_f1"]  # curves already queued
    assert all(p.is_file() for p in written.values())


def test_a_job_failing_in_the_worker_fails_here_the_same_way(tmp_path):
    worker = PlotWorker()
    worker.submit("per_class_f1", "not a dict", tmp_path / "f1.png")
    assert worker._proc is not None  # it really went to the worker first
    with pytest.raises(TypeError, match="string indices"):
        worker.wait()


def test_a_job_that_cannot_be_pickled_is_drawn_here(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "noop", lambda *a: drawn.append(a), raising=False)
    worker = PlotWorker()
    worker.submit("noop", lambda: None, tmp_path / "x.png")  # a lambda does not pickle
    assert worker._proc is None
    worker.wait()
    assert len(drawn) == 1


def test_no_worker_process_still_draws_everything(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no processes left")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    written = _draw(tmp_path, PlotWorker())
    assert sorted(written) == ["confusion", "curves", "f1"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in written.values())


def test_worker_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("spawned"))
    written = _draw(tmp_path, PlotWorker(enabled=False))
    assert all(p.is_file() for p in written.values())


def test_a_run_draws_its_curves_in_the_other_process(tmp_path, small_arrays, monkeypatch):
    """Drawing the curves in this process fails: the run still has them (the worker drew
    them), and they are the curves of this run's history."""

    def not_here(*args, **kwargs):
        raise AssertionError("training curves drawn in the training process")

    monkeypatch.setattr(plots, "training_curves", not_here)
    x, y = small_arrays
    run = graft.train(
        (x, y), "mobilenet_v2", tmp_path / "run", weights="none", alpha=0.35,
        image_size=32, strategy="feature", epochs=2, batch_size=16, verbose=0,
    )  # fmt: skip
    curves = tmp_path / "run" / plots.PLOTS_DIR / plots.CURVES
    assert curves.is_file() and curves.stat().st_size > 5000
    monkeypatch.undo()
    again = plots.training_curves(run.history, tmp_path / "again.png")
    assert again.read_bytes() == curves.read_bytes()
    assert np.isfinite([r["loss"] for r in run.history]).all()


def test_worker_does_not_import_tensorflow():
    out = subprocess.run(
        [sys.executable, "-c", plot_worker._MAIN.replace("plot_worker.main()", "")
         + "import sys; print('tensorflow' in sys.modules, 'keras' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["False", "False"]


def test_a_run_draws_every_plot_in_the_worker(tmp_path, digits_folder, monkeypatch):
    """Issue 24 point 12: the worker starts with the run and draws every plot, the
    confusion matrix too; the training process draws none (so never imports matplotlib
    for them), and each plot is there."""

    def not_here(*args, **kwargs):
        raise AssertionError("a plot drawn in the training process")

    names = ("training_curves", "confusion_matrix", "per_class_f1", "reliability", "worst_errors")
    for name in names:
        monkeypatch.setattr(plots, name, not_here)
    out = tmp_path / "run"
    graft.train(
        digits_folder, "mobilenet_v2", out, weights="none", alpha=0.35, image_size=32,
        strategy="feature", epochs=2, batch_size=16, val_split=0.3, head=(8,), verbose=0,
    )  # fmt: skip
    folder = out / plots.PLOTS_DIR
    for name in (plots.CURVES, plots.CONFUSION, plots.F1, plots.RELIABILITY, plots.ERRORS):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 1000, name

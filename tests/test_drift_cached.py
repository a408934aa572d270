"""Feature drift after partial fine-tuning on cached activations: measured on the cached
validation activations (only the top of the backbone runs, no image is read), with the
same numbers as through the images."""

from __future__ import annotations

import pytest

import graft
from conftest import IMAGE
from graft.api import pipeline
from graft.reporting import drift
from graft.training import activations

RUN = dict(
    cut="block3_pool", batch_size=8, seed=3, image_size=IMAGE, strategy="finetune",
    unfreeze="blocks:1", epochs=2, lr=0.05, optimizer="sgd", verbose=0, keep="last",
    val_split=0.2, pool="avg", preprocess="none",  # a hold-out; the scenario's inputs
)  # fmt: skip


def _drift(data, backbone, out, monkeypatch, cached_inputs: bool):
    calls = []
    measure = drift.measure

    def spy(*args, **kwargs):
        calls.append(kwargs.get("through"))
        return measure(*args, **kwargs)

    monkeypatch.setattr(drift, "measure", spy)
    if not cached_inputs:
        monkeypatch.setattr(pipeline, "_drift_inputs", lambda *a: None)
    run = graft.train(data, backbone=str(backbone), out=out, cache_dir=str(out.parent / "c"), **RUN)
    monkeypatch.undo()
    return run.metrics["feature_drift"], calls


def test_drift_on_cached_activations_equals_drift_on_images(
    digits_folder, cnn_file, tmp_path, monkeypatch
):
    monkeypatch.setattr(activations, "DTYPE", "float32")
    fast, calls = _drift(digits_folder, cnn_file, tmp_path / "a", monkeypatch, True)
    assert len(calls) == 1 and calls[0] is not None  # the top on activations, not images
    assert calls[0].input_shape[1:] != (IMAGE, IMAGE, 3)
    monkeypatch.setattr(activations, "DTYPE", "float32")
    slow, calls = _drift(digits_folder, cnn_file, tmp_path / "b", monkeypatch, False)
    assert calls == [None]
    assert fast["images"] == slow["images"] > 0
    assert fast["cka"] < 0.999999  # the top really moved: a drift worth comparing
    assert fast["cka"] == pytest.approx(slow["cka"], abs=2e-6)
    assert fast["cosine"] == pytest.approx(slow["cosine"], abs=2e-6)

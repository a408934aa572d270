"""End-of-run work that is proportional: a frozen backbone is not run again after training.

With feature extraction the validation features are already cached: the evaluation runs
the head alone on them (reading only the worst errors' images) and gives the numbers the
full model gives on the raw images; drift needs no image at all.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import graft
from graft.core import model_utils
from graft.data import adapter
from graft.data.pipelines import load_image
from graft.reporting import drift, evaluation


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory, digits_folder):
    from graft.api import pipeline

    seen: list = []
    real = pipeline.report.finish_run

    def spy(run_dir, inputs):
        val = inputs.validation
        seen.append(inputs.model if val is None or val.model is None else val.model)
        return real(run_dir, inputs)

    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline.report, "finish_run", spy)
    try:
        out = tmp_path_factory.mktemp("whole") / "run"
        run = graft.train(
            digits_folder, "mobilenet_v2", out, weights="none", alpha=0.35, image_size=32,
            strategy="feature", epochs=1, batch_size=8, val_split=0.5, verbose=0,
            log=lambda _: None,
        )  # fmt: skip
    finally:
        mp.undo()
    return run, seen


def test_frozen_run_evaluates_the_head_on_cached_features(feature_run):
    run, seen = feature_run
    assert len(seen) == 1 and seen[0].name == "graft_head"  # not the full model


def test_cached_evaluation_equals_the_full_model_on_raw_images(feature_run, digits_folder):
    run, _ = feature_run
    ev = run.metrics["evaluation"]
    _, val = adapter.adapt(digits_folder).split(0.5, run.config.seed)  # the run's split
    paths = [str(p) for p in val.files.paths]
    images = np.stack([load_image(p, (32, 32), 3) for p in paths])
    labels = np.asarray(val.labels)
    full = evaluation.evaluate_model(run.model, [(images, labels)], run.classes, paths=paths)
    again = full.as_dict()
    assert ev["images"] == again["images"] == len(paths)
    assert ev["confusion_matrix"] == again["confusion_matrix"]
    assert ev["loss"] == pytest.approx(again["loss"], abs=1e-5)
    assert [w["path"] for w in ev["worst_errors"]] == [w["path"] for w in again["worst_errors"]]
    shown = evaluation.evaluate_model(
        model_utils.head_model(run.model),
        [(model_utils.features_model(run.model).predict(images, verbose=0), labels)],
        run.classes,
        pixels=lambda i: images[i],
    )
    assert len(shown.worst) == len(full.worst)
    for a, b in zip(shown.worst, full.worst):
        np.testing.assert_array_equal(a.image, b.image)  # thumbnails: the same pixels


def test_unchanged_backbone_drift_reads_no_image(feature_run):
    run, _ = feature_run
    assert run.metrics["feature_drift"]["unchanged"] is True
    reference = drift.snapshot(run.model)

    def boom(_):
        raise AssertionError("an image was read")

    images = tf.data.Dataset.from_tensor_slices(np.zeros((5, 32, 32, 3), "float32"))
    images = images.map(lambda x: tf.numpy_function(boom, [x], tf.float32)).batch(2)
    result = drift.measure(run.model, reference, images, count=5)
    assert result == {"cka": 1.0, "cosine": 1.0, "images": 5, "split": "val", "unchanged": True}

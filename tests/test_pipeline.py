"""The training pipeline (graft.api.pipeline): frozen step results, nothing mutated behind
a caller, one backbone reference, one data description, and a run without a run folder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import graft
from conftest import IMAGE
from graft.api import pipeline
from graft.data import adapter

RESULTS = (
    pipeline.Request,
    pipeline.BackboneRef,
    pipeline.Context,
    pipeline.PreparedData,
    pipeline.Built,
    pipeline.Pipelines,
    pipeline.TrainerSetup,
    pipeline.Fitted,
)


@pytest.mark.parametrize("kind", RESULTS, ids=lambda k: k.__name__)
def test_step_results_are_frozen(kind):
    assert dataclasses.is_dataclass(kind) and kind.__dataclass_params__.frozen


def test_the_data_description_is_classified_once_and_frozen(small_arrays, tmp_path):
    x, y = small_arrays
    arrays = adapter.adapt((x, y))
    assert arrays.kind == "arrays" and arrays.classes == ["0", "1", "2"]
    assert arrays.images is not None and arrays.paths is None and arrays.origin is None
    named = arrays.with_classes(["a", "b", "c"])
    assert named.classes == ["a", "b", "c"] and arrays.classes == ["0", "1", "2"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        arrays.names = ["x"]
    folder = tmp_path / "data"
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        (folder / name / "1.png").write_bytes(b"")
    files = adapter.adapt(folder)
    assert files.kind == "files" and files.spelled == str(folder)
    assert files.origin == str(folder.resolve()) and files.images is None
    assert files.paths == [str(p) for p in files.files.paths]


def test_the_backbone_is_classified_once(cnn_file):
    import keras

    named = pipeline.BackboneRef.of("mobilenet_v2")
    assert named.model is None and named.setting == "mobilenet_v2" and not named.is_file
    assert pipeline.BackboneRef.of(str(cnn_file)).is_file
    model = keras.models.load_model(cnn_file)
    obj = pipeline.BackboneRef.of(model)
    assert obj.model is model and obj.setting == f"keras.Model:{model.name}"
    kept = obj.kept_in(cnn_file.parent)
    assert kept.saved.endswith("backbone.keras") and obj.saved is None
    assert named.kept_in(cnn_file.parent) is named


def test_match_scaling_returns_a_new_backbone(small_arrays, cnn_file):
    from graft.api import building
    from graft.config.settings import TrainConfig

    cfg = TrainConfig(backbone=str(cnn_file), cut="block3_pool", image_size=IMAGE)
    bb = building.resolve_backbone(cfg, True)
    before = (bb.preprocess, bb.scaling)
    found = pipeline.match_scaling(cfg, bb, adapter.adapt(small_arrays), lambda _: None)
    assert (bb.preprocess, bb.scaling) == before  # the caller's backbone is unchanged
    assert found is not bb and found.scaling is not None


def test_arrays_train_in_memory_without_a_run_folder(small_arrays, cnn_file, tmp_path, monkeypatch):
    """What cross-validation folds need: arrays in, a Run out, nothing written, the
    caller's arrays and settings untouched."""
    monkeypatch.chdir(tmp_path)
    x, y = small_arrays
    x0, y0 = x.copy(), y.copy()
    settings = dict(
        cut="block3_pool", image_size=IMAGE, epochs=1, batch_size=8, val_split=0.2, verbose=0
    )
    given = dict(settings)
    run = graft.train((x, y), str(cnn_file), None, log=lambda _: None, **settings)
    assert run.run_dir is None and "val_accuracy" in run.metrics
    assert run.classes == ["0", "1", "2"]
    assert list(tmp_path.iterdir()) == []
    assert np.array_equal(x, x0) and np.array_equal(y, y0) and settings == given

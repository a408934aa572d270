"""Hybrid runs compute the frozen bottom once per image: the head phase's features are
derived from the cached activations of the fine-tuning phase, with the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

import graft
from conftest import IMAGE, snapshot
from graft.training import activations, cache, derived

RUN = dict(
    cut="block3_pool", batch_size=8, seed=3, image_size=IMAGE, strategy="hybrid",
    unfreeze="blocks:1", epochs=1, finetune_epochs=1, lr=0.05, finetune_lr=0.05,
    optimizer="sgd", precise_bn=False, verbose=0,
    val_split=0.2, pool="avg",  # the caches of a hold-out, average pooling as tuned
)  # fmt: skip


@pytest.fixture
def passes(monkeypatch):
    """The image passes (one per split and view) of both caches, by split size."""
    seen: list[int] = []
    images = cache.split_images

    def counted(split, *args, **kwargs):
        seen.append(split.count)  # the data description (graft.data.adapter)
        return images(split, *args, **kwargs)

    monkeypatch.setattr(cache, "split_images", counted)
    return seen


def _train(data, backbone, tmp_path, **kw):
    lines: list[str] = []
    settings = {**RUN, "cache_dir": str(tmp_path / "cache"), **kw}
    return graft.train(data, backbone=str(backbone), log=lines.append, **settings), lines


def _features(lines):
    return [line for line in lines if line.startswith("Feature cache")]


def _entries(tmp_path) -> dict:
    return {p.name: np.load(p) for p in (tmp_path / "cache").glob("*.npy")}


def test_hybrid_runs_the_bottom_once_with_the_same_weights(
    digits_folder, cnn_file, tmp_path, monkeypatch, passes
):
    """float32 activations: the derived features equal the image pass's (the old path:
    cache on, features from the images) to rtol 1e-5 / atol 1e-6, the activation cache's
    own tolerance, and so does every weight the run trains (head phase, then top)."""
    monkeypatch.setattr(activations, "DTYPE", "float32")
    run, lines = _train(digits_folder, cnn_file, tmp_path / "a")
    assert sorted(passes) == [6, 30]  # one image pass per split, not two
    assert all("from the cached activations" in line for line in _features(lines))
    assert len(_features(lines)) == 2
    assert run.metrics["activation_cache"]["head_features"] == {
        "derived_from_activations": ["train", "val"]
    }
    passes.clear()
    monkeypatch.setattr(derived, "from_activations", lambda *a: None)
    old_run, lines = _train(digits_folder, cnn_file, tmp_path / "c")
    assert sorted(passes) == [6, 6, 30, 30]
    assert not any("from the cached activations" in line for line in _features(lines))
    assert "head_features" not in old_run.metrics["activation_cache"]
    a, b = snapshot(run.model), snapshot(old_run.model)
    for path in a:
        np.testing.assert_allclose(a[path], b[path], rtol=1e-5, atol=1e-6, err_msg=path)
    mine, old = _entries(tmp_path / "a"), _entries(tmp_path / "c")
    assert len(mine) == len(old) == 2 and not set(mine) & set(old)  # derived: other keys
    for values in mine.values():
        (same,) = [v for v in old.values() if v.shape == values.shape]
        np.testing.assert_allclose(values, same, rtol=1e-5, atol=1e-6)


def test_derived_features_follow_their_activation_entry(digits_folder, cnn_file, tmp_path):
    """Reused with their entry; recomputed when it changes (another boundary)."""
    kw = dict(val_split=0.0)
    lines = _features(_train(digits_folder, cnn_file, tmp_path, **kw)[1])
    assert lines == [lines[0]] and "computed 36 images from the cached activations" in lines[0]
    lines = _features(_train(digits_folder, cnn_file, tmp_path, **kw)[1])
    assert "reused 36 images from the cached activations" in lines[0]
    lines = _features(_train(digits_folder, cnn_file, tmp_path, unfreeze="blocks:2", **kw)[1])
    assert "computed 36 images from the cached activations" in lines[0]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_views_and_arrays_derive_too(digits_folder, small_arrays, cnn_file, tmp_path, passes):
    """Augmented views: each view's features come from that view's activations; arrays
    work the same way."""
    kw = dict(augment="light", cache_views=2)
    run, lines = _train(digits_folder, cnn_file, tmp_path, **kw)
    assert sorted(passes) == [6, 30, 30]  # two views of train, val: once each
    assert len(_features(lines)) == 3
    assert all("from the cached activations" in line for line in _features(lines))
    derived_splits = run.metrics["activation_cache"]["head_features"]["derived_from_activations"]
    assert derived_splits == ["train, view 1", "train, view 2", "val"]
    passes.clear()
    _, lines = _train(small_arrays, cnn_file, tmp_path / "arrays")
    assert sorted(passes) == [6, 18]
    assert all("from the cached activations" in line for line in _features(lines))

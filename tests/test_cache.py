"""The feature cache: same result as the uncached path, and never stale."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import graft
from graft.core import model_utils
from graft.training import cache

SMALL = dict(weights="none", image_size=32, alpha=0.35, batch_size=8, verbose=0)


def _train(folder, tmp_path, **kw):
    lines = []
    run = graft.train(
        folder,
        "mobilenet_v2",
        None,
        cache_dir=str(tmp_path / "cache"),
        log=lines.append,
        **{**SMALL, "val_split": 0.2, **kw},  # the train and hold-out caches
    )
    return run, lines


def _head_weights(run):
    return [
        np.asarray(v)
        for layer in run.model.layers
        if layer.name.startswith("head_")
        for v in layer.weights
    ]


def test_cached_and_uncached_training_give_the_same_head(digits_folder, tmp_path):
    """Same seed and data order: the head sees the same features in the same order.

    The features come from the same frozen backbone in inference mode, only batched
    differently, so the trained heads agree to float tolerance (here: exactly).
    """
    cached, lines = _train(digits_folder, tmp_path, strategy="feature", epochs=3, cache=True)
    assert any("on cached features" in line for line in lines)
    plain, lines = _train(digits_folder, tmp_path, strategy="feature", epochs=3, cache=False)
    assert not any("cached" in line for line in lines)
    for a, b in zip(_head_weights(cached), _head_weights(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert cached.metrics["val_accuracy"] == pytest.approx(plain.metrics["val_accuracy"])


def test_saved_model_on_raw_images_matches_head_on_cached_features(digits_folder, tmp_path):
    run, _ = _train(digits_folder, tmp_path, strategy="feature", epochs=2, val_split=0.0)
    files = list(digits_folder.rglob("*.png"))
    entries = list((tmp_path / "cache").glob("*.npy"))
    assert len(entries) == 1
    features = np.load(entries[0])
    from PIL import Image

    # The cache stores the training files in their scanned order: class folders sorted.
    from graft.data.sources import scan_folder

    scanned = scan_folder(digits_folder)
    assert len(features) == len(scanned) == len(files)
    raw = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in scanned.paths])
    on_raw = run.model.predict(raw, verbose=0)
    on_features = model_utils.head_model(run.model).predict(features, verbose=0)
    np.testing.assert_allclose(on_raw, on_features, rtol=1e-4, atol=1e-5)


def _keys(lines):
    return [line for line in lines if line.startswith("Feature cache (train)")]


def test_cache_is_reused_and_invalidated(digits_folder, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(digits_folder, folder)
    common = dict(strategy="feature", epochs=1, val_split=0.0)
    _, first = _train(folder, tmp_path, **common)
    _, again = _train(folder, tmp_path, **common)
    assert "computed" in _keys(first)[0] and "reused" in _keys(again)[0]
    # One changed image file: recomputed.
    victim = sorted(folder.rglob("*.png"))[3]
    from PIL import Image

    pixels = np.asarray(Image.open(victim)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(victim)
    _, changed_file = _train(folder, tmp_path, **common)
    assert "computed" in _keys(changed_file)[0]
    # Other weights (another random init): recomputed.
    _, other_weights = _train(folder, tmp_path, seed=7, **common)
    assert "computed" in _keys(other_weights)[0]
    # Another image size: recomputed.
    _, other_size = _train(folder, tmp_path, **{**common, "image_size": 40})
    assert "computed" in _keys(other_size)[0]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4


def test_key_depends_on_weights_and_content():
    from graft.core.backbones import resolve
    from graft.core.model import build_model

    model = build_model(resolve("mobilenet_v2", weights="none", image_size=32, alpha=0.35), 2)
    a = cache.cache_key(model, "mobilenet_v2", "content-1")
    assert a == cache.cache_key(model, "mobilenet_v2", "content-1")
    assert a != cache.cache_key(model, "mobilenet_v2", "content-2")
    kernel = model.get_layer("backbone").get_layer("Conv1").kernel
    kernel.assign(np.asarray(kernel) + 1e-3)
    assert a != cache.cache_key(model, "mobilenet_v2", "content-1")


def test_no_cache_writes_nothing(digits_folder, tmp_path):
    _train(digits_folder, tmp_path, strategy="feature", epochs=1, cache=False)
    assert not (tmp_path / "cache").exists()


def test_augmented_views_are_cached_and_cycled(digits_folder, tmp_path):
    run, lines = _train(
        digits_folder, tmp_path, strategy="feature", epochs=3, augment="light", cache_views=2
    )
    views = [line for line in lines if "augmented view" in line]
    assert len(views) == 2 and all("computed" in line for line in views)
    assert any("on cached features" in line for line in lines)
    # Two augmented training views and the plain validation features are stored.
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    assert len(run.history) == 3
    # The augmentation is not part of the trained model.
    assert not any("augment" in layer.name for layer in run.model.layers)


def test_augmentation_without_views_falls_back_to_the_backbone(digits_folder, tmp_path):
    _, lines = _train(digits_folder, tmp_path, strategy="feature", epochs=1, augment="light")
    assert any(line.startswith("Feature cache off: augmentation") for line in lines)
    assert not any("on cached features" in line for line in lines)
    assert not (tmp_path / "cache").exists()


def test_key_depends_on_preprocessing_without_weights(cnn_file):
    """Rescaling has no weights: the key must still tell x from x/255 apart."""
    from graft.core.backbones import resolve
    from graft.core.model import build_model

    keys = set()
    for mode in ("none", "unit", "symmetric"):
        bb = resolve(str(cnn_file), cut="block3_pool", preprocess=mode)
        keys.add(cache.cache_key(build_model(bb, 3), bb.source, "same-content"))
    assert len(keys) == 3

"""graft train on any backend: the Pillow decode recipe, graft's epoch order and the
backend-neutral reader, and the exactness tests (frozen bits, resume, cache equivalence).

Marked ``backend``: the default (TensorFlow) suite runs them, and CI runs them again with
``KERAS_BACKEND=jax`` in a TensorFlow-free venv, where training reads the images with
:mod:`graft.data.neutral` (TensorFlow keeps ``tf.data``). Small on purpose: the tiny CNN
of ``conftest`` at 32 px on 36 digits images.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image, ImageOps

import graft
from conftest import SMALL_CLI, history_rows, saved_weights, stop_after
from graft.data import decode, neutral
from graft.data.order import epoch_order
from graft.training.checkpoints import Interrupted

pytestmark = pytest.mark.backend

BACKEND = keras.backend.backend()
QUIET = dict(verbose=0, log=lambda _: None)
#: The tiny CNN cut below its old head, trained on 36 images, batch 8, with dropout (its
#: seed-generator state must resume too).
TINY = dict(cut="block3_pool", batch_size=8, seed=4, dropout=0.3, lr=0.01, val_split=0.0)


# ---------------------------------------------------------------------------------------
# The recipe and the order
# ---------------------------------------------------------------------------------------


def _pillow_reference(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """The recipe written out with Pillow directly: upright, RGB, bilinear, float32."""
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8).astype(np.float32)


def _encoded_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    images = {}

    def save(name, image, fmt, **kw):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kw)
        images[name] = buffer.getvalue()

    rgb = Image.fromarray(pixels)
    save("rgb.png", rgb, "PNG")
    save("palette.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG")
    save("grey.png", rgb.convert("L"), "PNG")
    save("one-bit.bmp", rgb.convert("1"), "BMP")
    save("rgba.png", Image.fromarray(np.dstack([pixels, pixels[..., :1]]), "RGBA"), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to be upright
    save("rotated.jpg", rgb, "JPEG", quality=90, exif=exif.tobytes())
    return images


def test_pillow_recipe_gives_the_same_arrays_bit_for_bit(tmp_path):
    """Same files, same arrays, whatever the backend: the recipe is Pillow and NumPy only."""
    size = (24, 32)
    for name, data in _encoded_images().items():
        path = tmp_path / name
        path.write_bytes(data)
        got = decode.load(path, size, 3)
        assert got.dtype == np.float32 and got.shape == (*size, 3), name
        np.testing.assert_array_equal(got, _pillow_reference(data, size), err_msg=name)
    # The EXIF orientation is applied: the rotated JPEG is taller than wide before resizing.
    upright = decode.load(tmp_path / "rotated.jpg", (56, 40), 3)
    assert upright.shape == (56, 40, 3)
    assert decode.load(tmp_path / "grey.png", size, 1).shape == (*size, 1)
    with pytest.raises(ValueError, match="not a readable image"):
        decode.decode(b"not an image", size, 3)


def test_the_recipe_is_named():
    named = decode.recipe("jax")
    assert named == {"library": "pillow", "version": Image.__version__, "filter": "bilinear"}


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    first = epoch_order(50, seed=3, epoch=0)
    assert sorted(first.tolist()) == list(range(50))
    np.testing.assert_array_equal(first, epoch_order(50, 3, 0))
    assert not np.array_equal(first, epoch_order(50, 3, 1))
    assert not np.array_equal(first, epoch_order(50, 4, 0))


def test_neutral_reader_follows_the_epoch_order():
    x = np.arange(10, dtype="float32").reshape(10, 1)
    batches = neutral.array_batches(x, np.arange(10), batch_size=4, shuffle=True, seed=7)
    assert len(batches) == 3
    for epoch in (0, 5, 2):
        batches.set_epoch(epoch)
        seen = np.concatenate([batches[i][1] for i in range(len(batches))])
        np.testing.assert_array_equal(seen, epoch_order(10, 7, epoch))
        rows = np.concatenate([batches[i][0][:, 0] for i in range(len(batches))])
        np.testing.assert_array_equal(rows, seen.astype("float32"))
    plain = neutral.array_batches(x, np.arange(10), batch_size=4)
    np.testing.assert_array_equal(plain[2][1], [8, 9])


# ---------------------------------------------------------------------------------------
# graft train on this backend
# ---------------------------------------------------------------------------------------


def _cli(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "graft.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("strategy", ["feature", "hybrid"])
def test_cli_train_runs_on_this_backend(strategy, digits_folder, tmp_path):
    out = tmp_path / "run"
    args = ["train", digits_folder, *SMALL_CLI, "--strategy", strategy, "--out", out]
    done = _cli(*args, "--epochs", "1", "--finetune-epochs", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "model.keras").is_file() and (out / "report.html").is_file()
    config = (out / "config.yaml").read_text()
    library = "tf.io" if BACKEND == "tensorflow" else "pillow"
    assert f"library: {library}" in config and "filter: bilinear" in config
    assert f"backend: {BACKEND}" in config
    if strategy != "feature":
        return
    # The trained run is evaluated and predicts on the same backend (the same reader).
    done = _cli("evaluate", out, digits_folder)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "five" in done.stdout
    done = _cli("predict", out, digits_folder / "five")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len([line for line in done.stdout.splitlines() if ".png," in line]) == 12
    # ... and its report is made again, re-evaluated on the folder (the plot worker, the
    # model card) on this backend.
    for name in ("report.html", "MODEL_CARD.md"):
        (out / name).unlink()
    done = _cli("report", out, "--data", digits_folder)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "five" in (out / "report.html").read_text() and (out / "MODEL_CARD.md").is_file()


def _backbone_weights(model, names) -> dict:
    found = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if layer.name in names and layer.weights:
            found[layer.name] = [np.asarray(keras.ops.convert_to_numpy(w)) for w in layer.weights]
    return found


def test_feature_run_leaves_the_frozen_backbone_bit_for_bit(digits_folder, cnn_file, tmp_path):
    run = graft.train(
        digits_folder, str(cnn_file), tmp_path / "run", strategy="feature", epochs=2,
        cache=False, **TINY, **QUIET,
    )  # fmt: skip
    original = keras.saving.load_model(cnn_file)
    names = {layer.name for layer in original.layers if layer.weights} - {"old_head"}
    before = _backbone_weights(original, names)
    after = _backbone_weights(keras.saving.load_model(tmp_path / "run" / "model.keras"), names)
    assert set(before) == set(after) == names
    for name in names:
        for a, b in zip(before[name], after[name], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert run.history and all(np.isfinite(r["loss"]) for r in run.history)


def _head_weights(run):
    return [
        np.asarray(keras.ops.convert_to_numpy(v))
        for layer in run.model.layers
        if layer.name.startswith("head_")
        for v in layer.weights
    ]


def test_cached_features_give_the_same_head_as_uncached(digits_folder, cnn_file, tmp_path):
    """The same images in the same (epoch) order, through the same frozen backbone: the
    head trained on cached features equals the one trained on images (as on TF)."""
    settings = dict(TINY, strategy="feature", epochs=3, cache_dir=str(tmp_path / "cache"))
    lines = []
    cached = graft.train(
        digits_folder, str(cnn_file), None, **settings, verbose=0, log=lines.append
    )
    assert any("on cached features" in line for line in lines), lines
    plain = graft.train(digits_folder, str(cnn_file), None, **settings, cache=False, **QUIET)
    for a, b in zip(_head_weights(cached), _head_weights(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cache", [False, True], ids=["images", "cached"])
def test_killed_run_resumes_exactly(cache, digits_folder, cnn_file, tmp_path, monkeypatch):
    """Stopped after epoch 3 (inside the fine-tuning phase), resumed: the same history and
    weights, bit for bit, as the uninterrupted run. On a backend other than TensorFlow the
    order of epoch e comes from (seed, e) alone (graft.data.order): nothing is replayed."""
    settings = dict(
        TINY, strategy="hybrid", epochs=2, finetune_epochs=2, finetune_lr=0.005,
        cache=cache, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    ref = tmp_path / "reference"
    graft.train(digits_folder, str(cnn_file), ref, **settings, **QUIET)
    run = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        stop_after(patch, 3)
        with pytest.raises(Interrupted):
            graft.train(digits_folder, str(cnn_file), run, **settings, **QUIET)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["epoch"] == 3
    graft.train(digits_folder, resume=run, **QUIET)
    got, want = history_rows(run), history_rows(ref)
    assert [r["epoch"] for r in got] == ["1", "2", "3", "4"]
    assert got == want
    for a, b in zip(saved_weights(run), saved_weights(ref), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_cache_key_names_the_decode_recipe(monkeypatch):
    """A cache filled from tf.io's pixels is not served to a Pillow run (nor the reverse):
    the two recipes differ by a few levels on most pixels of a JPEG."""
    from graft.core.loaders import Backbone
    from graft.core.model import HeadConfig, build_model
    from graft.data import decode
    from graft.training.cache import cache_key

    inputs = keras.Input((8, 8, 3))
    base = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    bb = Backbone(base, [], "none", (8, 8), 3, "test", "test")
    model = build_model(bb, 3, HeadConfig(pool="avg"))
    here = cache_key(model, "src", "data", weights="w")
    assert cache_key(model, "src", "data", weights="w") == here
    mine = decode.recipe()
    other = {**mine, "library": "pillow" if mine["library"] == "tf.io" else "tf.io"}
    monkeypatch.setattr(decode, "recipe", lambda backend=None: other)
    assert cache_key(model, "src", "data", weights="w") != here

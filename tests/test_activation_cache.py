"""The activation cache: partial fine-tuning on cached bottom activations trains the same
weights as the uncached path, saves the plain full model, and is never stale."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest

import graft
from conftest import IMAGE, snapshot
from graft.core.blocks import group
from graft.core.model import backbone_of
from graft.training import activations

RUN = dict(
    cut="block3_pool", batch_size=8, seed=3, image_size=IMAGE, strategy="finetune",
    unfreeze="blocks:1", epochs=2, lr=0.05, finetune_lr=0.05, optimizer="sgd",
    precise_bn=False, verbose=0,
    val_split=0.2, pool="avg",  # the caches of a hold-out, average pooling as tuned
)  # fmt: skip


def _train(folder, backbone, tmp_path, **kw):
    lines: list[str] = []
    settings = {**RUN, "cache_dir": str(tmp_path / "cache"), **kw}
    run = graft.train(folder, backbone=str(backbone), log=lines.append, **settings)
    return run, lines


def _cache_lines(lines):
    return [line for line in lines if line.startswith("Activation cache")]


@pytest.fixture
def float32(monkeypatch):
    monkeypatch.setattr(activations, "DTYPE", "float32")


def test_cached_path_trains_the_same_weights(digits_folder, cnn_file, tmp_path, float32):
    """Same seed, same shuffle order, float32 activations: every weight agrees to
    rtol 1e-5 / atol 1e-6 (float round-off of the differently batched bottom pass), and
    the frozen bottom is bit for bit what it was."""
    cached, lines = _train(digits_folder, cnn_file, tmp_path)
    assert any(line.endswith("epochs on cached activations") for line in lines)
    summary = cached.metrics["activation_cache"]
    assert summary["boundary"] == "block3_conv" and summary["dtype"] == "float32"
    assert summary["bytes"] > 0 and summary["phases"] == [1]
    plain, lines = _train(digits_folder, cnn_file, tmp_path, cache=False)
    assert not _cache_lines(lines) and "activation_cache" not in plain.metrics
    a, b = snapshot(cached.model), snapshot(plain.model)
    for path in a:
        np.testing.assert_allclose(a[path], b[path], rtol=1e-5, atol=1e-6, err_msg=path)
    source = keras.saving.load_model(cnn_file)
    for model in (cached.model, plain.model):
        backbone = backbone_of(model)
        for name in ("block1_conv", "block1_bn", "block2_conv", "block2_bn"):
            for mine, original in zip(
                backbone.get_layer(name).get_weights(), source.get_layer(name).get_weights()
            ):
                assert np.array_equal(mine, original), name


def test_saved_model_predicts_like_the_cached_path(digits_folder, cnn_file, tmp_path, float32):
    run, _ = _train(digits_folder, cnn_file, tmp_path, out=tmp_path / "run", val_split=0.0)
    saved = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert saved.count_params() == run.model.count_params()  # the plain full model
    boundary, _, _ = activations.plan(run.model, run.backbone.blocks, run.config.resolved_plan())
    top = activations.top_model(run.model, boundary)
    entries = sorted((tmp_path / "cache" / "activations").glob("*.npy"))
    assert len(entries) == 1
    on_cache = top.predict(np.load(entries[0]), verbose=0)
    from PIL import Image

    files = sorted(p for p in digits_folder.rglob("*.png"))  # the scanned order
    images = np.stack(
        [np.asarray(Image.open(p).convert("RGB").resize((IMAGE, IMAGE))) for p in files]
    )
    np.testing.assert_allclose(saved.predict(images, verbose=0), on_cache, rtol=1e-4, atol=1e-5)


def test_entries_are_reused_and_invalidated(digits_folder, cnn_file, tmp_path):
    def computed(lines):
        line = _cache_lines(lines)[-1]
        return "reused" not in line

    kw = dict(epochs=1, val_split=0.0)
    assert computed(_train(digits_folder, cnn_file, tmp_path, **kw)[1])
    assert not computed(_train(digits_folder, cnn_file, tmp_path, **kw)[1])
    # other data: one pixel of one file
    data = tmp_path / "data"
    shutil.copytree(digits_folder, data)
    from PIL import Image

    first = sorted(data.rglob("*.png"))[0]
    pixels = np.asarray(Image.open(first)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(first)
    assert computed(_train(data, cnn_file, tmp_path, **kw)[1])
    # other weights of the bottom
    from conftest import make_cnn

    other = tmp_path / "other.keras"
    make_cnn(seed=7).save(other)
    assert computed(_train(digits_folder, other, tmp_path, **kw)[1])
    # another boundary
    lines = _train(digits_folder, cnn_file, tmp_path, unfreeze="blocks:2", **kw)[1]
    assert computed(lines) and "block2_conv" in _cache_lines(lines)[-1]
    assert len(list((tmp_path / "cache" / "activations").glob("*.npy"))) == 4
    # a damaged entry is recomputed, never used
    entry = sorted((tmp_path / "cache" / "activations").glob("*.npy"))[0]
    entry.write_bytes(entry.read_bytes()[:-4] + b"\0\0\0\1")
    for _ in range(2):
        for folder, model in ((digits_folder, cnn_file), (data, cnn_file)):
            _train(folder, model, tmp_path, **kw)
    assert len(list((tmp_path / "cache" / "activations").glob("*.npy"))) == 4


def _residual(seed=0):
    """stem conv -> [conv a -> conv b] + stem (skip) -> relu -> conv top."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    stem = keras.layers.Conv2D(4, 3, padding="same", name="stem_conv")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", name="res_a")(stem)
    x = keras.layers.Conv2D(4, 3, padding="same", name="res_b")(x)
    x = keras.layers.Add(name="res_add")([x, stem])
    x = keras.layers.ReLU(name="res_relu")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="top_conv")(x)
    return keras.Model(inputs, x, name="residual")


def test_skip_connection_boundary_moves_down_or_falls_back():
    model = _residual()
    blocks = group(model)
    index = {layer.name: i for i, layer in enumerate(model.layers)}
    # from:res_b: res_a's output and the skip both cross: move down to a block edge.
    boundary, why = activations.find_boundary(model, blocks, index["res_b"])
    assert why is None and boundary.moved_from == "res_b"
    assert (
        boundary.index <= index["res_a"] and len(activations.crossing(model, boundary.index)) == 1
    )
    # above the merge one tensor crosses: no move
    boundary, why = activations.find_boundary(model, blocks, index["top_conv"])
    assert boundary.layer == "top_conv" and boundary.moved_from is None
    # no single-tensor block edge below: a one-line reason, no cache
    one_block = [type(blocks[0])("all", list(model.layers[1:]))]
    boundary, why = activations.find_boundary(model, one_block, index["res_b"])
    assert boundary is None and "skip connection" in why and "\n" not in why


def test_augmentation_falls_back_or_uses_views(digits_folder, cnn_file, tmp_path):
    _, lines = _train(digits_folder, cnn_file, tmp_path, epochs=1, augment="light")
    assert any(line.startswith("Activation cache off: augmentation") for line in lines)
    assert not any("on cached activations" in line for line in lines)
    run, lines = _train(digits_folder, cnn_file, tmp_path, epochs=2, augment="light", cache_views=2)
    assert any("on cached activations" in line for line in lines)
    # two views of the training split + the validation split
    assert len(list((tmp_path / "cache" / "activations").glob("*.npy"))) == 3


def test_a_phase_that_trains_the_bottom_ends_the_cache(cnn_file, digits_folder, tmp_path):
    """hybrid: features then blocks:1 (cached); a later 'all' phase would change the bottom."""
    from graft.config.phase import Phase

    run, _ = _train(digits_folder, cnn_file, tmp_path, epochs=1)
    plan = [Phase("a", "blocks:1", 1, 0.01), Phase("b", "all", 1, 0.01), Phase("c", "blocks:1", 1)]
    boundary, served, why = activations.plan(run.model, run.backbone.blocks, plan)
    assert served == {1}
    boundary, served, why = activations.plan(run.model, run.backbone.blocks, plan[1:])
    assert boundary is None and "changes the frozen bottom" in why


def test_evaluation_runs_the_top_on_cached_activations(
    digits_folder, cnn_file, tmp_path, float32, monkeypatch
):
    """The end-of-run evaluation of the validation split predicts with the top on its
    cached activations (no bottom pass) and scores what the full model scores on the
    images; once the bottom's weights differ from the cached ones it is not used."""
    import json

    from graft.api import pipeline
    from graft.reporting import evaluation

    used, caches = [], []
    evaluate, evaluator = evaluation.evaluate_model, activations.ActivationCache.evaluator

    def spy_evaluate(model, *args, **kwargs):
        used.append(model.name)
        return evaluate(model, *args, **kwargs)

    def spy_evaluator(self, model):
        caches.append(self)
        return evaluator(self, model)

    monkeypatch.setattr(evaluation, "evaluate_model", spy_evaluate)
    monkeypatch.setattr(activations.ActivationCache, "evaluator", spy_evaluator)
    _train(digits_folder, cnn_file, tmp_path, out=tmp_path / "a", val_split=0.3)
    assert used == ["graft_top"]
    monkeypatch.setattr(pipeline, "_evaluated_on", lambda *a: None)
    _train(digits_folder, cnn_file, tmp_path, out=tmp_path / "b", val_split=0.3)
    assert used[1] != "graft_top"
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text())["evaluation"] for d in "ab")
    assert a["accuracy"] == b["accuracy"] and a["images"] == b["images"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-4)
    acts = caches[0]
    assert acts.evaluator(acts.source)  # unchanged bottom
    kernel = backbone_of(acts.source).get_layer("block1_conv").kernel
    kernel.assign(kernel + 1.0)
    assert acts.evaluator(acts.source) == ()

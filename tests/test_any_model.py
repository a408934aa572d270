"""Any model, any image: a generated matrix of architectures x cuts x strategies x cache.

Each architecture is built here (nobody's hand-picked fixture): a plain CNN with a
Flatten/Dense classifier, a residual CNN (``Add``), a nested functional > sequential >
functional model, a 1-channel model, a legacy ``.h5`` file and a tiny ViT-like model
with a ``(tokens, dim)`` output. Every case trains (1 epoch, 36 digits images), keeps
what must stay frozen bit-identical, loads in plain Keras with ``safe_mode=True``,
evaluates, predicts and exports; hybrid cases are interrupted and resumed.
The default run is a representative subset; ``-m slow`` runs the whole sweep.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import IMAGE, stop_after
from graft.config.names import POOLS_4D
from graft.errors import DataError, GraftError

QUIET = dict(log=lambda _: None, verbose=0)
FAST = dict(epochs=1, finetune_epochs=1, batch_size=8, seed=0, unfreeze="all", keep="last")


def _bn_stats(model):
    for layer in model._flatten_layers(recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.linspace(-0.3, 0.3, n).astype("float32"))
            layer.moving_variance.assign(np.linspace(0.5, 1.5, n).astype("float32"))
    return model


def plain(channels: int = 3) -> keras.Model:
    L = keras.layers
    keras.utils.set_random_seed(0)
    inputs = keras.Input((IMAGE, IMAGE, channels))
    x = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="act")(x)
    x = L.MaxPooling2D(4, name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(16, activation="relu", name="fc")(x)
    outputs = L.Dense(4, activation="softmax", name="old_head")(x)
    return _bn_stats(keras.Model(inputs, outputs, name="plain"))


def residual() -> keras.Model:
    L = keras.layers
    keras.utils.set_random_seed(1)
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
    y = L.Conv2D(8, 3, padding="same", name="res_conv")(x)
    y = L.BatchNormalization(name="res_bn")(y)
    x = L.Add(name="add")([x, y])
    x = L.Activation("relu", name="relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(4, activation="softmax", name="old_head")(x)
    return _bn_stats(keras.Model(inputs, outputs, name="residual"))


def nested() -> keras.Model:
    L = keras.layers
    keras.utils.set_random_seed(2)
    inner_in = keras.Input((16, 16, 8))
    y = L.Conv2D(8, 3, padding="same", name="inner_conv")(inner_in)
    inner = keras.Model(inner_in, L.BatchNormalization(name="inner_bn")(y), name="inner")
    middle = keras.Sequential(
        [keras.Input((16, 16, 8)), inner, L.Conv2D(8, 3, padding="same", name="mid_conv")],
        name="middle",
    )
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
    x = middle(x)
    x = L.Conv2D(8, 3, padding="same", name="top_conv")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(4, activation="softmax", name="old_head")(x)
    return _bn_stats(keras.Model(inputs, outputs, name="nested"))


def vit() -> keras.Model:
    """Patches -> tokens -> one self-attention block: a ``(16, 16)`` token output."""
    L = keras.layers
    keras.utils.set_random_seed(3)
    inputs = keras.Input((IMAGE, IMAGE, 3))
    x = L.Conv2D(16, 8, strides=8, name="patch_embed")(inputs)
    x = L.Reshape((16, 16), name="tokens")(x)
    y = L.LayerNormalization(name="ln")(x)
    y = L.MultiHeadAttention(2, 8, name="attention")(y, y)
    outputs = L.Add(name="encoder_out")([x, y])
    return keras.Model(inputs, outputs, name="tiny_vit")


#: architecture -> (builder, file suffix, {cut kind: layer name or None for uncut}).
ARCHS = {
    "plain": (
        plain,
        ".keras",
        dict(
            conv="conv", bn="bn", act="act", pool="pool", flatten="flatten", dense="fc", uncut=None
        ),
    ),
    "residual": (residual, ".keras", dict(add="add", act="relu", pool="gap", uncut=None)),
    "nested": (nested, ".keras", dict(submodel="middle", conv="top_conv", pool="gap", uncut=None)),
    "gray": (lambda: plain(1), ".keras", dict(act="act", dense="fc", uncut=None)),
    "h5": (plain, ".h5", dict(pool="pool", dense="fc", uncut=None)),
    "vit": (vit, ".keras", dict(uncut=None, ln="ln")),
}
STRATEGIES = ("feature", "finetune", "hybrid")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("any_models")
    paths = {}
    for name, (build, suffix, _) in ARCHS.items():
        paths[name] = root / f"{name}{suffix}"
        build().save(paths[name])
    return paths


def _source(path: Path, cut: str | None) -> keras.Model:
    model = keras.saving.load_model(path, compile=False)
    if cut is None:
        return model
    return keras.Model(model.inputs, model.get_layer(cut).output)


def _case(tmp_path, data, path, cut, strategy, cache, pool="auto", full=True, resume=False):
    """Train one case and check everything a user does with the run afterwards."""
    import graft
    from graft.core.model import backbone_of
    from graft.reporting import export, predict

    out = tmp_path / "run"
    settings = dict(backbone=str(path), cut=cut, strategy=strategy, cache=cache)
    if pool != "auto":
        settings["pool"] = pool
    run = graft.train(data, out=out, **QUIET, **FAST, **settings)
    source = _source(path, cut)
    trained = backbone_of(run.model)
    pairs = list(zip(source.weights, trained.weights, strict=True))
    for want, got in pairs:
        if strategy == "feature" or "moving_" in want.path:  # frozen, or BN statistics
            np.testing.assert_array_equal(np.asarray(want), np.asarray(got), err_msg=want.path)
    if strategy != "feature" and any(v.trainable for v in source.trainable_weights):
        assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs)
    loaded = keras.saving.load_model(out / "model.keras", safe_mode=True)  # plain Keras
    assert loaded.output_shape == (None, 3)
    if full:
        result = graft.evaluate(out, data)
        assert result["images"] == 36 and result["skipped"] == 0
        files = sorted(str(p) for p in Path(data).rglob("*.png"))[:3]
        got = list(predict.predict_files(loaded, run.classes, files))
        assert [p.path for p in got] == files
        done = export.export(out, "keras", tmp_path / "exported.keras")
        assert done.check["max_abs_diff"] <= export.FLOAT_TOLERANCE
    if resume:
        _resume(tmp_path, data, settings)
    return run


def _resume(tmp_path, data, settings):
    import graft
    from graft.training.checkpoints import Interrupted

    out = tmp_path / "resumed"
    with pytest.MonkeyPatch.context() as patch:
        stop_after(patch, 1)
        with pytest.raises(Interrupted):
            graft.train(data, out=out, **QUIET, **FAST, **settings)
    run = graft.train(data, resume=out, **QUIET)
    assert len(run.history) == 2


# --------------------------------------------------------------------- the fast core

SLOW = pytest.mark.slow
CORE = [  # (architecture, cut kind, strategy, cache, pool, full checks, resume)
    ("plain", "dense", "hybrid", True, "auto", True, False),  # the 2-D crash of issue 11
    ("gray", "uncut", "feature", True, "auto", False, False),
    ("vit", "uncut", "feature", False, "cls", False, False),
    pytest.param("plain", "uncut", "finetune", False, "auto", False, False, marks=SLOW),
    pytest.param("residual", "add", "hybrid", True, "avgmax", True, True, marks=SLOW),
    pytest.param("nested", "pool", "hybrid", False, "auto", False, False, marks=SLOW),
    pytest.param("h5", "pool", "finetune", True, "max", False, False, marks=SLOW),
    pytest.param("vit", "uncut", "hybrid", True, "auto", True, False, marks=SLOW),
]


def _id(case) -> str:
    return "-".join(map(str, getattr(case, "values", case)))


@pytest.mark.parametrize(
    "arch,kind,strategy,cache,pool,full,resume", CORE, ids=[_id(c) for c in CORE]
)
def test_core_matrix(
    arch, kind, strategy, cache, pool, full, resume, model_files, digits_folder, tmp_path
):
    cut = ARCHS[arch][2][kind]
    _case(tmp_path, digits_folder, model_files[arch], cut, strategy, cache, pool, full, resume)


SWEEP = [
    (arch, kind, strategy, cache)
    for arch, (_, _, cuts) in ARCHS.items()
    for kind, strategy, cache in itertools.product(cuts, STRATEGIES, (True, False))
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch,kind,strategy,cache", SWEEP, ids=["-".join(map(str, c)) for c in SWEEP]
)
def test_full_sweep(arch, kind, strategy, cache, model_files, digits_folder, tmp_path):
    cut = ARCHS[arch][2][kind]
    _case(
        tmp_path,
        digits_folder,
        model_files[arch],
        cut,
        strategy,
        cache,
        resume=strategy == "hybrid",
    )


# ------------------------------------------------------------ the head's input, unit level


@pytest.mark.parametrize(
    "shape,pool,features",
    [
        ((None, 4, 4, 6), "auto", 6),
        ((None, 4, 4, 6), "max", 6),
        ((None, 4, 4, 6), "avgmax", 12),
        ((None, 4, 4, 6), "flatten", 96),
        ((None, 5, 6), "auto", 6),
        ((None, 5, 6), "cls", 6),
        ((None, 5, 6), "flatten", 30),
        ((None, 7), "auto", 7),
    ],
)
def test_pooling_gives_a_vector_named_head_features(shape, pool, features):
    from graft.core.model import HEAD_INPUT, pooling_layers

    x = keras.Input(shape[1:])
    layers = pooling_layers(shape, pool)
    for layer in layers:
        x = layer(x)
    assert layers[-1].name == HEAD_INPUT and tuple(x.shape) == (None, features)


def test_token_pooling_values_mean_of_patches_and_cls():
    from graft.core.model import pooling_layers

    tokens = np.arange(2 * 4 * 3, dtype="float32").reshape(2, 4, 3)
    for pool, want in (("mean", tokens[:, 1:].mean(axis=1)), ("cls", tokens[:, 0])):
        x = inputs = keras.Input((4, 3))
        for layer in pooling_layers((None, 4, 3), pool):
            x = layer(x)
        np.testing.assert_allclose(keras.Model(inputs, x)(tokens), want, rtol=1e-6)


@pytest.mark.parametrize(
    "shape,pool", [((None, 4, 4, 6), "cls"), ((None, 5, 6), "avg"), ((None, 7), "max")]
)
def test_a_pool_that_does_not_fit_the_output_is_one_clear_error(shape, pool):
    from graft.core.model import pooling_layers

    with pytest.raises(GraftError, match=f"pool='{pool}'"):
        pooling_layers(shape, pool)


def _backbone(model, channels=3):
    from graft.core.loaders import Backbone

    return Backbone(model, [], "none", (IMAGE, IMAGE), channels, "test", "test")


def test_feature_cache_keys_differ_per_pooling():
    from graft.core.model import HeadConfig, build_model
    from graft.training.cache import cache_key

    inputs = keras.Input((IMAGE, IMAGE, 3))
    bb = _backbone(keras.Model(inputs, keras.layers.Conv2D(4, 3, name="c")(inputs)))
    keys = {cache_key(build_model(bb, 3, HeadConfig(pool=p)), "src", "data") for p in POOLS_4D}
    assert len(keys) == len(POOLS_4D)


def test_multi_output_model_is_refused_naming_its_outputs_and_cut():
    from graft.core.model import build_model

    inputs = keras.Input((IMAGE, IMAGE, 3))
    a = keras.layers.Conv2D(4, 3, name="branch_a")(inputs)
    b = keras.layers.Conv2D(4, 3, name="branch_b")(inputs)
    with pytest.raises(GraftError) as info:
        build_model(_backbone(keras.Model(inputs, [a, b])), 3)
    text = str(info.value)
    assert "branch_a" in text and "branch_b" in text and "cut=" in text


def test_four_channel_model_is_refused_in_one_line():
    from graft.core.model import build_model

    inputs = keras.Input((IMAGE, IMAGE, 4))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(GraftError, match="4-channel"):
        build_model(_backbone(model, 4), 3)


# ----------------------------------------------------------------------------- channels


def test_tf_data_rgb_into_a_one_channel_model_is_converted_and_rgba_is_one_data_error():
    import tensorflow as tf

    from graft.data.pipelines import dataset_pipeline, fit_arrays

    rgb = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3)).astype("uint8")
    ds = tf.data.Dataset.from_tensor_slices((rgb, np.zeros(4, "int32")))
    x, _ = next(iter(dataset_pipeline(ds, (8, 8), channels=1, batch_size=4)))
    np.testing.assert_allclose(x.numpy(), fit_arrays(rgb, (8, 8), 1), atol=1e-4)
    assert x.shape == (4, 8, 8, 1)
    rgba = tf.data.Dataset.from_tensor_slices((np.zeros((4, 8, 8, 4), "uint8"), np.zeros(4)))
    with pytest.raises(DataError, match="4 channels; the backbone takes 1"):
        dataset_pipeline(rgba, (8, 8), channels=1)
    with pytest.raises(DataError, match="4 channels; the backbone takes 1"):
        fit_arrays(np.zeros((2, 8, 8, 4)), (8, 8), 1)


def test_data_check_says_what_decoding_does_for_the_backbone_channels(tmp_path):
    from PIL import Image

    from graft.data import check as datacheck
    from graft.data.sources import load_source

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (10, 10), (200, 10, 10)).save(tmp_path / cls / "rgb.png")
        Image.new("L", (10, 10), 90).save(tmp_path / cls / "gray.png")
    report = datacheck.check(load_source(tmp_path))
    gray = report.channel_line(1)
    assert "2 image(s) converted to grayscale for a 1-channel backbone (2 RGB)" in gray
    assert "2 image(s) converted to RGB for a 3-channel backbone (2 grayscale)" in (
        report.channel_line(3)
    )


# ------------------------------------------------------------------ images as they come


@pytest.fixture(scope="module")
def digits_8px(tmp_path_factory):
    """scikit-learn's digits 0-2 as real 8x8 grayscale PNGs, not resized."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits8")
    for c in range(3):
        (root / str(c)).mkdir()
        for i in np.flatnonzero(digits.target == c)[:12]:
            pixels = (digits.images[i] * 255 / 16).astype("uint8")
            Image.fromarray(pixels, "L").save(root / str(c) / f"{i}.png")
    Image.new("RGB", (1, 1)).save(root / "0" / "pixel.png")  # a tracking pixel
    return root


def test_small_real_images_train_evaluate_and_predict_with_defaults(
    digits_8px, model_files, tmp_path, capsys
):
    import yaml

    import graft
    from graft import cli

    out = tmp_path / "run"

    lines = []
    graft.train(
        digits_8px, backbone=str(model_files["plain"]), cut="fc", out=out, strategy="feature",
        epochs=1, batch_size=8, log=lines.append, verbose=0,
    )  # fmt: skip
    text = "\n".join(lines)
    assert "36 usable, 1 skipped" in text and "pixel.png (1x1)" in text and "min_size=2" in text
    assert "converted to RGB for a 3-channel backbone (36 grayscale)" in text
    result = graft.evaluate(out, digits_8px)
    assert result["images"] == 36 and result["skipped"] == 1
    assert cli.main(["evaluate", str(out), str(digits_8px)]) == 0
    assert cli.main(["predict", str(out), str(digits_8px / "1")]) == 0
    assert len([ln for ln in capsys.readouterr().out.splitlines() if ".png" in ln]) >= 12
    # predict reads images as the run did: the 1x1 pixel is skipped by the run's min_size
    assert cli.main(["predict", str(out), str(digits_8px / "0")]) == 0
    captured = capsys.readouterr()
    assert "pixel.png" not in captured.out and "pixel.png: image too small" in captured.err
    assert "--min-size 2" in captured.err
    assert cli.main(["predict", str(out), str(digits_8px / "0"), "--min-size", "1"]) == 0
    assert "pixel.png" in capsys.readouterr().out
    # evaluate reads images with the run's own min_size (config.yaml), unless overridden
    config = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({**config, "min_size": 9}))
    with pytest.raises(DataError, match="min_size=9"):
        graft.evaluate(out, digits_8px)
    assert graft.evaluate(out, digits_8px, min_size=2)["images"] == 36
    assert cli.main(["evaluate", str(out), str(digits_8px), "--min-size", "2"]) == 0
    assert cli.main(["evaluate", str(out), str(digits_8px)]) == 2
    assert "--min-size 9" in capsys.readouterr().err
    with pytest.raises(DataError, match="min_size=9"):  # training names it too
        graft.train(digits_8px, backbone=str(model_files["plain"]), cut="fc", min_size=9, **QUIET)


@pytest.mark.parametrize(
    "shape, pool, expected",
    [
        ((None, 4, 4, 16), "auto", "global average pooling of (4, 4, 16) -> 16 features"),
        ((None, 4, 4, 16), "avgmax", "concatenated, -> 32 features"),
        ((None, 4, 4, 16), "flatten", "flattening of (4, 4, 16) -> 256 features"),
        ((None, 17, 16), "auto", "the mean of the patch tokens of (17, 16) -> 16 features"),
        ((None, 17, 16), "cls", "the CLS token of (17, 16) -> 16 features"),
        ((None, 16), "auto", "the (16,) output as it is -> 16 features"),
    ],
)
def test_pooling_summary_names_the_pooling_and_the_feature_count(shape, pool, expected):
    from graft.core.model import pooling_summary

    assert pooling_summary(shape, pool).endswith(expected)


def test_training_logs_the_head_input_once(tmp_path, cnn_file, small_arrays):
    import graft

    lines = []
    graft.train(
        small_arrays, str(cnn_file), None, cut="block3_pool", strategy="feature", epochs=1,
        batch_size=8, pool="avg", verbose=0, log=lines.append,
    )  # fmt: skip
    head = [line for line in lines if line.startswith("Head input:")]
    assert head == ["Head input: global average pooling of (4, 4, 16) -> 16 features"]

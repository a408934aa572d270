"""KerasHub backbones (the optional ``keras-graft[hub]`` extra): files, presets, objects."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402

import graft  # noqa: E402
from conftest import IMAGE, changed, snapshot, stop_after  # noqa: E402
from graft.core.backbones import resolve  # noqa: E402
from graft.core.model import build_model  # noqa: E402
from graft.errors import GraftError  # noqa: E402
from graft.runs import files, model_io  # noqa: E402


def tiny_vit() -> keras.Model:
    keras.utils.set_random_seed(7)
    return keras_hub.models.ViTBackbone(
        image_shape=(IMAGE, IMAGE, 3),
        patch_size=8,
        num_layers=3,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
    )


def tiny_resnet() -> keras.Model:
    keras.utils.set_random_seed(7)
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        image_shape=(None, None, 3),
    )


def test_vit_blocks_are_its_transformer_layers_and_blocks_1_trains_only_the_last(small_arrays):
    from graft.data.pipelines import array_pipeline
    from graft.training.trainer import Trainer

    bb = resolve(tiny_vit())
    assert [b.name for b in bb.blocks] == [
        "vit_patching_and_embedding",
        "vit_encoder/transformer_block_1",
        "vit_encoder/transformer_block_2",
        "vit_encoder/transformer_block_3",
    ]
    assert bb.requires == ("keras-hub",)
    model = build_model(bb, 3)
    backbone = model.get_layer("backbone")
    start = snapshot(model)
    plan = graft.plan("finetune", epochs=1, unfreeze="blocks:1", finetune_lr=1e-2)
    x, y = small_arrays
    Trainer(model, bb.blocks, verbose=0, log=lambda _: None).fit(plan, array_pipeline(x, y, 8))
    moved = changed(start, snapshot(model)) & {v.path for v in backbone.weights}
    expected = {v.path for layer in bb.blocks[-1].layers for v in layer.weights}
    assert moved == expected  # the last transformer layer and the final LayerNorm, nothing else


def test_vit_file_trains_and_the_run_model_loads_again(tmp_path, small_arrays):
    path = tmp_path / "vit.keras"
    tiny_vit().save(path)
    run = graft.train(
        small_arrays,
        str(path),
        tmp_path / "run",
        classes=["a", "b", "c"],
        strategy="hybrid",
        epochs=1,
        finetune_epochs=1,
        unfreeze="blocks:1",
        batch_size=8,
        val_split=0.0,
        preprocess="symmetric",
        log=lambda _: None,
        verbose=0,
    )
    loaded, classes = model_io.load(tmp_path / "run")
    images = small_arrays[0][:4]
    np.testing.assert_allclose(
        np.asarray(loaded(images)), np.asarray(run.model(images)), rtol=1e-5, atol=1e-6
    )
    assert run.metrics is not None
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "keras-hub" in config  # which packages loading the model needs
    assert "keras-hub" in (tmp_path / "run" / "MODEL_CARD.md").read_text()


def test_preset_directory_with_any_size_input(tmp_path):
    preset = tmp_path / "resnet_preset"
    tiny_resnet().save_to_preset(str(preset))
    converter = keras_hub.layers.ResNetImageConverter(image_size=(48, 48), scale=1 / 255)
    converter.save_to_preset(str(preset))
    bb = resolve(str(preset))  # size and preprocessing from the preset's image converter
    assert bb.image_size == (48, 48) and bb.preprocess == "unit"
    assert [b.name for b in bb.blocks] == ["stem", "stack0_block0", "stack1_block0"]
    assert resolve(str(preset), image_size=32).image_size == (32, 32)


def test_any_size_input_needs_an_image_size(tmp_path):
    path = tmp_path / "resnet.keras"
    tiny_resnet().save(path)
    with pytest.raises(GraftError, match="image_size"):
        resolve(str(path))
    bb = resolve(str(path), image_size=IMAGE)
    assert bb.image_size == (IMAGE, IMAGE) and bb.channels == 3


def test_model_object_trains_and_is_saved_for_resume(tmp_path, small_arrays):
    out = tmp_path / "run"
    run = graft.train(
        small_arrays,
        tiny_vit(),
        out,
        classes=["a", "b", "c"],
        strategy="feature",
        epochs=1,
        batch_size=8,
        val_split=0.0,
        log=lambda _: None,
        verbose=0,
    )
    assert (out / "backbone.keras").is_file()
    config = files.read_yaml(out / "config.yaml", {})
    assert config["backbone"] == str((out / "backbone.keras").resolve())  # what resume loads
    again = resolve(config["backbone"])
    for a, b in zip(again.model.weights, run.model.get_layer("backbone").weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # frozen: unchanged
    loaded, _ = model_io.load(out)
    images = small_arrays[0][:4]
    np.testing.assert_allclose(
        np.asarray(loaded(images)), np.asarray(run.model(images)), rtol=1e-5, atol=1e-6
    )


def test_a_cut_that_would_not_load_again_is_refused(tmp_path):
    path = tmp_path / "vit.keras"
    tiny_vit().save(path)
    with pytest.raises(GraftError, match="ViTPatchingAndEmbedding.*would not load again"):
        resolve(str(path), cut="vit_patching_and_embedding")
    # a KerasHub CNN made of plain Keras layers can be cut anywhere
    bb = resolve(tiny_resnet(), cut="stack0_block0_out", image_size=IMAGE)
    assert [b.name for b in bb.blocks] == ["stem", "stack0_block0"]


def test_cut_auto_on_a_preset_directory_measures_its_block_ends(tmp_path, digits_folder):
    """``--cut auto`` works for KerasHub presets too: the block ends of a tiny ResNet and
    its own output are scored, and the run's backbone ends at the choice."""
    import yaml

    from graft import cli

    preset = tmp_path / "resnet_preset"
    tiny_resnet().save_to_preset(str(preset))
    converter = keras_hub.layers.ResNetImageConverter(image_size=(IMAGE, IMAGE), scale=1 / 255)
    converter.save_to_preset(str(preset))
    out = tmp_path / "run"
    run = graft.train(
        str(digits_folder), str(preset), out, cut="auto", strategy="feature", verbose=0,
        log=lambda _: None,
    )  # fmt: skip
    transfer = run.metrics["transfer"]
    measured = {c["cut"] for c in transfer["candidates"] if "mean" in c}
    assert transfer["output"] in measured and len(measured) == 3  # stem, stack0_block0, output
    ends_at = run.model.get_layer("backbone").layers[-1].name
    assert ends_at == transfer["cut"].split("/")[-1]
    # a preset takes any size and knows its own only through its converter: a cut of it
    # is made (and replayed) at the size it was measured at
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["image_size"] == IMAGE and config["cut"] == transfer["cut"]
    again = tmp_path / "again"
    assert cli.main(["train", "--config", str(out / "config.yaml"), "--out", str(again)]) == 0
    assert (
        json.loads((again / "metrics.json").read_text())["val_accuracy"]
        == run.metrics["val_accuracy"]
    )


def test_run_model_loads_in_plain_keras_with_its_optimizer_state(tmp_path, small_arrays):
    """A KerasHub backbone forgets its layers' trainable flags when loaded: the shipped
    optimizer state must still fit what ``load_model(compile=True)`` rebuilds."""
    import warnings

    path = tmp_path / "vit.keras"
    tiny_vit().save(path)
    x, y = small_arrays
    run = graft.train(
        (x, y), str(path), tmp_path / "run", strategy="feature", epochs=1, batch_size=8,
        val_split=0.0, preprocess="symmetric", log=lambda _: None, verbose=0,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
    assert len(loaded.optimizer.variables) == len(run.model.optimizer.variables)
    np.testing.assert_allclose(
        np.asarray(loaded(x[:4])), np.asarray(run.model(x[:4])), rtol=1e-5, atol=1e-6
    )


def tiny_hub_mobilenet() -> keras.Model:
    keras.utils.set_random_seed(7)
    return keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[40], [64, 72]],
        stackwise_num_blocks=[1, 2],
        stackwise_num_filters=[[16], [24, 24]],
        stackwise_kernel_size=[[3], [5, 5]],
        stackwise_num_strides=[[2], [2, 1]],
        stackwise_se_ratio=[[None], [0.25, 0.25]],
        stackwise_activation=[["relu"], ["hard_swish", "hard_swish"]],
        stackwise_padding=[[1], [2, 2]],
        output_num_filters=48,
        depthwise_filters=8,
        depthwise_stride=2,
        depthwise_residual=False,
        last_layer_filter=48,
        image_shape=(IMAGE, IMAGE, 3),
    )


def tiny_hub_efficientnet() -> keras.Model:
    keras.utils.set_random_seed(7)
    return keras_hub.models.EfficientNetBackbone(
        stackwise_width_coefficients=[1.0] * 3,
        stackwise_depth_coefficients=[1.0] * 3,
        stackwise_kernel_sizes=[3, 3, 3],
        stackwise_num_repeats=[1, 2, 1],
        stackwise_input_filters=[8, 8, 16],
        stackwise_output_filters=[8, 16, 24],
        stackwise_expansion_ratios=[1, 4, 4],
        stackwise_squeeze_and_excite_ratios=[0.0, 0.0, 0.25],
        stackwise_strides=[1, 2, 2],
        stackwise_block_types=["fused", "fused", "unfused"],
        input_shape=(IMAGE, IMAGE, 3),
        num_features=32,
    )


@pytest.mark.parametrize(
    "make, names",
    [
        (
            tiny_hub_mobilenet,
            ["stem", "block_0_0", "block_1_0", "block_2_0", "block_2_1", "block_3_0"],
        ),
        (tiny_hub_efficientnet, ["stem", "block1a", "block2a", "block2b", "block3a", "top"]),
    ],
)
def test_hub_cnn_blocks_follow_their_own_naming(make, names):
    """KerasHub's MobileNet and EfficientNet blocks are their inverted-residual modules,
    with the stem and the head convolution grouped as a user reads them."""
    model = make()
    bb = resolve(model)
    assert [b.name for b in bb.blocks] == names
    grouped = [id(layer) for b in bb.blocks for layer in b.layers]
    assert len(grouped) == len(set(grouped))  # no layer in two blocks
    assert {id(layer) for layer in model.layers if layer.weights} <= set(grouped)


def test_a_run_started_from_a_model_object_resumes_exactly(tmp_path, monkeypatch, small_arrays):
    """Interrupted after its first fine-tuning epoch, a run whose backbone was a Python
    object resumes from the saved backbone.keras and ends where the uninterrupted run ends."""
    from graft.training.checkpoints import Interrupted

    settings = dict(
        classes=["a", "b", "c"], strategy="hybrid", epochs=1, finetune_epochs=2,
        unfreeze="blocks:1", batch_size=8, val_split=0.0, seed=3, deterministic=True,
        preprocess="symmetric", log=lambda _: None, verbose=0,
    )  # fmt: skip
    ref = tmp_path / "reference"
    graft.train(small_arrays, tiny_vit(), ref, **settings)

    run = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        stop_after(patch, 2)
        with pytest.raises(Interrupted):
            graft.train(small_arrays, tiny_vit(), run, **settings)
    graft.train(small_arrays, resume=run, log=lambda _: None, verbose=0)
    a, _ = model_io.load(run)
    b, _ = model_io.load(ref)
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=x.path)
    assert (run / "history.csv").read_text().count("\n") == 4  # header + 3 epochs, once each

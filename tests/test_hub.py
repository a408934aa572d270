"""KerasHub backbones (the optional ``keras-graft[hub]`` extra): files, presets, objects."""

from __future__ import annotations

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402

import graft  # noqa: E402
from conftest import IMAGE, changed, snapshot  # noqa: E402
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

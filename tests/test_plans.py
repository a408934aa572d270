"""gradual and lp-ft as plans of phases, custom YAML plans and --print-plan."""

from __future__ import annotations

import numpy as np
import pytest

import graft
from conftest import changed, snapshot
from graft.cli import main
from graft.config.strategies import Phase, plan_head
from graft.core.backbones import resolve
from graft.core.model import build_model
from graft.data.pipelines import array_pipeline
from graft.errors import GraftError, UnknownNameError
from graft.training.trainer import Trainer


@pytest.fixture
def cnn(cnn_file):
    return resolve(str(cnn_file), cut="block3_pool", preprocess="unit")


def test_gradual_unfreezes_one_more_block_per_phase():
    phases = graft.plan("gradual", epochs=3, finetune_epochs=6, gradual_blocks=3, lr=1e-2)
    assert [(p.name, p.trainable, p.epochs) for p in phases] == [
        ("head", "none", 3),
        ("unfreeze_1", "blocks:1", 2),
        ("unfreeze_2", "blocks:2", 2),
        ("unfreeze_3", "blocks:3", 2),
    ]
    assert phases[0].lr == 1e-2 and all(p.lr == 1e-5 for p in phases[1:])
    steps = graft.plan("gradual", gradual_blocks=5, gradual_step=2, gradual_epochs=4)
    assert [p.trainable for p in steps[1:]] == ["blocks:2", "blocks:4", "blocks:5"]
    assert all(p.epochs == 4 for p in steps[1:])
    with pytest.raises(GraftError, match="gradual_blocks=N"):
        graft.plan("gradual", unfreeze="all")


def test_gradual_phases_change_exactly_the_blocks_they_unfreeze(cnn, small_arrays):
    model = build_model(cnn, 3)
    x, y = small_arrays
    ds = array_pipeline(x, y, 8)
    trainer = Trainer(model, cnn.blocks, verbose=0, log=lambda _: None)
    phases = graft.plan("gradual", epochs=1, gradual_blocks=2, gradual_epochs=1, finetune_lr=1e-2)
    block_paths = [
        {v.path for layer in b.layers for v in layer.trainable_weights} for b in cnn.blocks
    ]
    moved_per_phase = []
    for phase in phases:
        before = snapshot(model)
        trainer.fit([phase], ds)
        moved = changed(before, snapshot(model))
        moved_per_phase.append([bool(moved & paths) for paths in block_paths])
    # head: no block; then the top block; then the top two.
    assert moved_per_phase == [[False, False, False], [False, False, True], [False, True, True]]


def test_lp_ft_is_a_linear_probe_then_everything(cnn, small_arrays):
    phases = graft.plan("lp-ft", epochs=2, finetune_epochs=1)
    assert [(p.name, p.trainable) for p in phases] == [("probe", "none"), ("finetune", "all")]
    assert plan_head(phases) == () and phases[0].early_stop > 0


def test_lp_ft_trains_a_model_without_hidden_head_layers(cnn_file, small_arrays):
    run = graft.train(
        small_arrays,
        str(cnn_file),
        cut="block3_pool",
        preprocess="unit",
        strategy="lp-ft",
        epochs=2,
        finetune_epochs=1,
        batch_size=8,
        val_split=0.25,
        cache=False,
        log=lambda _: None,
        verbose=0,
    )
    names = [layer.name for layer in run.model.layers]
    assert "head_output" in names and not any(n.startswith("head_dense") for n in names)
    assert [p["name"] for p in run.metrics["phases"]] == ["probe", "finetune"]
    assert run.metrics["phases"][1]["trainable_blocks"] == [b.name for b in run.backbone.blocks]


def test_plan_head_must_be_on_the_first_phase():
    with pytest.raises(GraftError, match="first phase"):
        plan_head([Phase("a"), Phase("b", head=(4,))])


PLAN = """\
- name: probe
  trainable: none
  epochs: 2
  lr: 0.01
  head: []
  early_stop: 1
- name: tune
  trainable: blocks:2
  epochs: 3
  lr: 0.001
  backbone_lr: 0.0001
  optimizer: sgd
  train_bn: true
  lr_mult: 0.5
  schedule: cosine
  warmup_epochs: 1
  weight_decay: 0.0001
  l2sp: 0.01
  recalibrate_bn: true
"""


def test_yaml_plan_reads_every_field(tmp_path):
    from graft.config import plans

    path = tmp_path / "plan.yaml"
    path.write_text(PLAN)
    probe, tune = plans.load(path)
    assert probe == Phase("probe", "none", 2, 0.01, head=(), early_stop=1)
    assert tune == Phase(
        "tune", "blocks:2", 3, 1e-3, 1e-4, "sgd", True, lr_mult=0.5, schedule="cosine",
        warmup_epochs=1, weight_decay=1e-4, l2sp=0.01, recalibrate_bn=True,
    )  # fmt: skip


def test_yaml_plan_unknown_field_is_one_line_listing_the_valid_ones(tmp_path, capsys):
    path = tmp_path / "plan.yaml"
    path.write_text("- name: a\n  epochs: 2\n  learning_rate: 0.1\n")
    code = main(["train", str(tmp_path), "-b", "mobilenet_v2", "-o", str(tmp_path / "r"),
                 "--plan", str(path), "--print-plan"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "learning_rate" in err and "backbone_lr" in err and "l2sp" in err
    with pytest.raises(UnknownNameError):
        Phase.from_dict({"name": "a", "warmup": 1})


def test_print_plan_shows_the_resolved_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", str(tmp_path / "no-data-needed"), "-b", "mobilenet_v2", "-o", str(out),
                 "--strategy", "gradual", "--gradual-blocks", "2", "--lr-mult", "0.5",
                 "--l2sp", "0.01", "--print-plan"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0 and not out.exists()
    for word in ("head", "unfreeze_1", "unfreeze_2", "blocks:2", "0.5^d", "l2sp 0.01"):
        assert word in text, word
    code = main(["train", str(tmp_path), "-b", "mobilenet_v2", "-o", str(out),
                 "--strategy", "lp-ft", "--print-plan"])  # fmt: skip
    assert "linear" in capsys.readouterr().out and not out.exists()


def test_run_wide_options_reach_every_phase():
    from graft.config.settings import TrainConfig

    cfg = TrainConfig(
        backbone="x",
        strategy="hybrid",
        epochs=1,
        finetune_epochs=3,
        layer_decay=0.8,
        schedule="cosine",
        warmup_epochs=2,
        recalibrate_bn=True,
    )
    head, tune = cfg.resolved_plan()
    assert head.layer_decay == tune.layer_decay == 0.8
    assert (head.warmup_epochs, tune.warmup_epochs) == (0, 2)  # clamped to epochs - 1
    assert head.recalibrate_bn and not tune.recalibrate_bn
    assert np.isclose(cfg.as_dict()["phases"][1]["layer_decay"], 0.8)

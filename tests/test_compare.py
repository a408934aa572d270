"""graft compare: same data and split for every strategy; CSV/markdown/PNG match the runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from graft import cli
from graft.api import compare as compare_mod
from graft.api.demo import write_folder


def test_compare_writes_table_matching_each_run(tmp_path, digits, digits_folder, cnn_file, capsys):
    x, y = digits
    idx = np.concatenate([np.flatnonzero(y == c)[20:26] for c in (5, 6, 7)])
    test_dir = write_folder(tmp_path / "test", x[idx], y[idx], {5: "five", 6: "six", 7: "seven"})
    out = tmp_path / "cmp"
    code = cli.main(
        ["compare", str(digits_folder), "-b", str(cnn_file), "--cut", "block3_pool",
         "--strategies", "feature,finetune,scratch", "--unfreeze", "all", "--finetune-lr", "0.01",
         "--epochs", "1", "--head", "", "--batch-size", "16", "--test", str(test_dir),
         "--val-split", "0.2", "-o", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    with open(out / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["strategy"] for r in rows] == ["feature", "finetune", "scratch"]
    splits = set()
    for row in rows:
        metrics = json.loads((out / row["strategy"] / "metrics.json").read_text())
        assert float(row["val_accuracy"]) == metrics["val_accuracy"]
        assert float(row["test_accuracy"]) == metrics["test_accuracy"]
        assert float(row["feature_drift_cka"]) == metrics["feature_drift"]["cka"]
        assert int(row["trainable_params"]) == max(p["trainable_params"] for p in metrics["phases"])
        splits.add((metrics["train_images"], metrics["val_images"], metrics["test_images"]))
        assert row["strategy"] in printed
    assert splits == {(30, 6, 18)}  # the same split for every strategy
    by_name = {r["strategy"]: r for r in rows}
    assert float(by_name["feature"]["feature_drift_cka"]) == 1.0
    assert float(by_name["finetune"]["feature_drift_cka"]) < 1.0
    assert int(by_name["feature"]["trainable_params"]) < int(by_name["scratch"]["trainable_params"])
    config = (out / "scratch" / "config.yaml").read_text()
    assert "weights: none" in config
    md = (out / "compare.md").read_text().splitlines()
    assert md[0].startswith("| strategy | val_accuracy | test_accuracy | feature_drift_cka")
    assert len(md) == 2 + 3 and md[3].startswith("| finetune | ")
    with Image.open(out / "compare.png") as png:
        assert png.format == "PNG" and png.size[0] > 300


def test_compare_rejects_unknown_strategy_in_one_line(tmp_path, digits_folder, cnn_file, capsys):
    code = cli.main(
        ["compare", str(digits_folder), "-b", str(cnn_file), "--strategies", "feature,hybird",
         "-o", str(tmp_path / "x")]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Unknown strategy: 'hybird'" in err and "hybrid" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "x").exists()


def test_compare_with_seeds_reports_mean_and_std(tmp_path, digits_folder, cnn_file):
    out = tmp_path / "cmp"
    code = cli.main(
        ["compare", str(digits_folder), "-b", str(cnn_file), "--cut", "block3_pool",
         "--strategies", "feature,scratch", "--seeds", "2", "--seed", "3", "--epochs", "1",
         "--head", "", "--batch-size", "16", "--val-split", "0.2", "-o", str(out)]
    )  # fmt: skip
    assert code == 0
    with open(out / "compare.csv", newline="") as handle:
        rows = {r["strategy"]: r for r in csv.DictReader(handle)}
    for name, row in rows.items():
        runs = [json.loads((out / name / f"seed{s}" / "metrics.json").read_text()) for s in (3, 4)]
        accuracies = [m["val_accuracy"] for m in runs]
        assert row["seeds"] == "2"
        assert float(row["val_accuracy"]) == pytest.approx(np.mean(accuracies))
        assert float(row["val_accuracy_std"]) == pytest.approx(np.std(accuracies))
        configs = [(out / name / f"seed{s}" / "config.yaml").read_text() for s in (3, 4)]
        assert "seed: 3" in configs[0] and "seed: 4" in configs[1]
    scratch = yaml.safe_load((out / "scratch" / "seed3" / "config.yaml").read_text())
    assert scratch["phases"][0]["precise_bn"] is True and scratch["phases"][0]["epochs"] == 1
    md = (out / "compare.md").read_text()
    assert " ± " in md and "over 2 seeds" in md


def test_scratch_gets_the_largest_epoch_budget():
    settings = {"epochs": 5, "finetune_epochs": 7}
    assert compare_mod.epoch_budget("m.keras", ["feature", "hybrid", "scratch"], settings) == 12
    assert compare_mod.epoch_budget("m.keras", ["feature", "scratch"], settings) == 5
    phase = compare_mod.scratch_phase(12, "auto")
    assert (phase.trainable, phase.train_bn, phase.precise_bn, phase.lr) == (
        "all",
        True,
        True,
        1e-3,
    )


def test_scratch_gets_a_budget_of_optimizer_steps_on_the_images_it_trains_on():
    """Counted in epochs, scratch on few labels got ten steps against the grafted rows'
    hundreds; with epochs="auto" it gets >= 1,000 steps (<= 200 epochs) on the images
    its final model trains on (k-fold refits on all; a hold-out keeps its training part)."""
    from graft.config.budget import MAX_SCRATCH_EPOCHS, MIN_SCRATCH_STEPS

    y = np.repeat(np.arange(3), 8)  # 8 per class: k-fold, the model trains on all 24
    x = np.zeros((len(y), 8, 8, 3), "uint8")
    assert compare_mod.trained_images((x, y), {}) == 24
    assert compare_mod.trained_images((x, y), {"val_split": 0.25}) == 18
    assert compare_mod.trained_images((x, y), {}, val=(x[:3], y[:3])) == 24
    y_big = np.repeat(np.arange(3), 40)  # 8 validation images per class: a hold-out
    x_big = np.zeros((len(y_big), 8, 8, 3), "uint8")
    assert compare_mod.trained_images((x_big, y_big), {}) == 96
    names = ["feature", "hybrid", "scratch"]
    assert compare_mod.scratch_budget("m.keras", names, {}, 24) == MAX_SCRATCH_EPOCHS
    images = 62 * 32  # 62 steps a pass at the default batch size
    assert compare_mod.scratch_budget("m.keras", names, {}, images) * 62 >= MIN_SCRATCH_STEPS
    # an explicit epoch budget is obeyed as before
    assert (
        compare_mod.scratch_budget("m.keras", names, {"epochs": 5, "finetune_epochs": 7}, 24) == 12
    )

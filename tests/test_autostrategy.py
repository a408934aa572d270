"""--strategy auto: a KerasTuner search whose every trial is recorded and whose best wins."""

from __future__ import annotations

import json

import numpy as np
import yaml

from graft import cli
from graft.api import auto as autostrategy


def test_auto_records_trials_and_trains_the_best(tmp_path, digits_folder, cnn_file, capsys):
    out = tmp_path / "auto"
    code = cli.main(
        ["train", str(digits_folder), "-b", str(cnn_file), "--cut", "block3_pool",
         "--strategy", "auto", "--budget-trials", "2", "--epochs", "1", "--finetune-epochs", "1",
         "--head", "", "--batch-size", "16", "--val-split", "0.2", "-o", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    record = json.loads((out / autostrategy.AUTO_FILE).read_text())
    trials = record["trials"]
    assert len(trials) == 2 and [t["trial"] for t in trials] == [1, 2]
    assert all(0.0 <= t["val_accuracy"] <= 1.0 for t in trials)
    # 36 images, 3 classes, 20 % validation: small data, so the prior (trial 1) is
    # feature extraction; the second trial is a different configuration.
    assert trials[0]["settings"] == record["prior"] and record["prior"]["strategy"] == "feature"
    assert trials[1]["settings"] != trials[0]["settings"]
    best = max(trials, key=lambda t: (t["val_accuracy"], -t["val_loss"], -t["trial"]))
    assert record["chosen_trial"] == best["trial"]
    # The best transfer trial and scratch were the finalists; the better one is the run.
    finalists = record["finalists"]
    assert [f["settings"]["strategy"] for f in finalists][1] == "scratch"
    assert finalists[0]["settings"] == best["settings"]
    assert record["chosen"] in (finalists[0]["settings"], finalists[1]["settings"])
    config = yaml.safe_load((out / "config.yaml").read_text())
    if record["chosen"]["strategy"] == "scratch":
        assert config["weights"] == "none" and config["phases"][0]["name"] == "scratch"
    else:
        assert config["strategy"] == record["chosen"]["strategy"]
        assert config["lr"] == record["chosen"]["lr"]
    if "unfreeze" in record["chosen"]:
        assert config["unfreeze"] == record["chosen"]["unfreeze"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["auto_search"]["chosen"] == record["chosen"]
    # Regression: the auto search's write of metrics.json used to drop "data" (and
    # "evaluation"), which the report writes: every section survives.
    assert metrics["data"]["train"] == metrics["train_images"]
    assert set(metrics["data"]["per_class"]) == {"five", "six", "seven"}
    assert metrics["evaluation"]["images"] == metrics["val_images"]
    assert "Auto trial 2/2" in printed and "Auto strategy chose" in printed


def test_auto_space_follows_the_data_size():
    small = autostrategy.search_space(images_per_class=10, blocks=5)
    large = autostrategy.search_space(images_per_class=500, blocks=5)
    assert small.get("strategy") == "feature" and large.get("strategy") == "hybrid"
    assert large.get("unfreeze_blocks") == 2 and large.get("finetune_lr") == 1e-4


def test_auto_without_validation_is_a_one_line_error(tmp_path, digits_folder, cnn_file, capsys):
    code = cli.main(
        ["train", str(digits_folder), "-b", str(cnn_file), "--strategy", "auto",
         "--val-split", "0", "-o", str(tmp_path / "x")]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "needs validation data" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_auto_chooses_scratch_where_the_backbone_is_useless(tmp_path):
    """A backbone whose first convolution is all zeros gives every image the same features:
    every transfer strategy is at chance, and auto must fall back to training from scratch."""
    from graft import api
    from graft.runs.files import save_model
    from plain_keras import build_cnn, digits_split

    model = build_cnn(5)
    kernel = model.get_layer("block1_conv").kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    save_model(model, tmp_path / "useless.keras")
    xtr, ytr, xte, yte = digits_split(per_class=10, seed=0)
    run = api.train(
        (xtr, ytr), str(tmp_path / "useless.keras"), tmp_path / "auto", test=(xte[:200], yte[:200]),
        cut="block3_relu", strategy="auto", budget_trials=2, epochs=10, finetune_epochs=10,
        batch_size=16, head=(), preprocess="unit", log=lambda _: None, verbose=0,
    )  # fmt: skip
    record = json.loads((tmp_path / "auto" / autostrategy.AUTO_FILE).read_text())
    assert record["chosen"] == {"strategy": "scratch", "lr": 1e-3, "epochs": 20}, record
    # 10 images per class: no hold-out; every candidate cross-validated on the same folds
    *transfer, scratch = record["trials"]
    assert [t["settings"]["strategy"] for t in transfer] == ["feature", "hybrid"]
    assert all(scratch["val_accuracy"] > t["val_accuracy"] for t in transfer)
    config = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert config["weights"] == "none" and config["phases"][0]["precise_bn"] is True
    assert run.metrics["test_accuracy"] > 0.5

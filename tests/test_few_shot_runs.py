"""Issue 22 through a run: val_split="auto" (k-fold and refit on every labelled image),
the converged probe as the head of feature/hybrid, and an explicit hold-out obeyed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import SMALL_CLI, make_cnn
from graft.api import auto as autostrategy
from graft.api import pipeline
from graft.core import model_utils
from graft.data.folds import plan_folds
from graft.training.probe import cross_validate, fit_probe

CLASSES = ["five", "six", "seven"]


@pytest.fixture
def cnn():
    # A fresh object per test: a run may call the object's layers again (a second node
    # on "gap" makes a later cut at it ambiguous).
    return make_cnn(seed=0)


def _train(data, backbone, **settings):
    import graft

    settings.setdefault("cut", "gap")  # features, not the old head's probabilities
    return graft.train(data, backbone, verbose=0, classes=CLASSES, **settings)


def test_feature_on_few_labels_refits_on_every_image_and_reports_the_cv_figure(small_arrays, cnn):
    x, y = small_arrays  # 8 images per class: a hold-out would leave 2 per class
    run = _train((x, y), cnn, strategy="feature", head=())
    m = run.metrics
    assert m["train_images"] == len(y) and m["val_images"] == 0
    assert m["epochs"] == 0 and not run.history  # solved, not trained
    protocol = m["val_protocol"]
    assert protocol["kind"] == "kfold" and protocol["cross_validated"] is True
    assert protocol["refit_on_all"] == len(y) and protocol["of"] == "the head"
    assert 0 <= m["val_accuracy"] <= 1 and m["val_accuracy_std"] >= 0 and m["val_loss"] > 0
    # The final model saw every labelled image: its head is the probe refit on all 24
    # features with the chosen C, and differs from a probe fit on any fold's training part.
    features = model_utils.features_model(run.model).predict(x, verbose=0)
    full = fit_probe(features, y, C=m["probe"]["C"], num_classes=3)
    kernel, bias = run.model.get_layer("head_output").get_weights()
    np.testing.assert_allclose(kernel, full.kernel, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias, full.bias, rtol=1e-4, atol=1e-5)
    folds = plan_folds(y, seed=0)
    train_idx = folds.splits[0][0]
    part = fit_probe(features[train_idx], y[train_idx], C=m["probe"]["C"], num_classes=3)
    assert not np.allclose(kernel, part.kernel, atol=1e-3)


def test_the_run_scores_no_image_in_its_own_folds_training(small_arrays, cnn, monkeypatch):
    x, y = small_arrays
    seen = []
    real = pipeline.fit_probe

    def spy(features, labels, folds=None, **kw):
        seen.append(folds)
        return real(features, labels, folds, **kw)

    monkeypatch.setattr(pipeline, "fit_probe", spy)
    run = _train((x, y), cnn, strategy="feature", head=())
    (folds,) = seen
    assert folds.kind == "kfold" and len(folds.splits) >= 10
    for train_idx, val_idx in folds.splits:
        assert not set(train_idx.tolist()) & set(val_idx.tolist())
    # The figure in metrics.json is the out-of-fold score over exactly these folds.
    features = model_utils.features_model(run.model).predict(x, verbose=0)
    score, _ = cross_validate(
        np.asarray(features, "float64"), y, folds.splits, run.metrics["probe"]["C"], 3
    )
    assert run.metrics["val_accuracy"] == pytest.approx(score.mean, abs=1e-4)


def test_an_explicit_val_split_is_obeyed_as_a_hold_out(small_arrays, cnn):
    x, y = small_arrays
    run = _train((x, y), cnn, strategy="feature", head=(), val_split=0.25)
    m = run.metrics
    assert m["val_images"] == 6 and m["train_images"] == 18
    assert m["val_protocol"]["kind"] == "holdout"
    assert m["val_protocol"]["cross_validated"] is False
    assert 0 <= m["val_accuracy"] <= 1  # evaluated on the hold-out (no epochs ran)


def test_hybrid_is_lp_ft_the_probe_then_fine_tuning_on_all_images(small_arrays, cnn):
    x, y = small_arrays
    run = _train((x, y), cnn, strategy="hybrid", head=(), finetune_epochs=2)
    assert [r["phase"] for r in run.history] == ["finetune", "finetune"]
    assert run.metrics["train_images"] == len(y) and run.metrics["val_images"] == 0
    assert run.metrics["val_protocol"]["of"] == "the first stage (linear probe)"
    assert run.metrics["kept"]["keep"] == "last"  # no hold-out: keep-best keeps the last


def test_explicit_epochs_train_the_head_by_gradient(small_arrays, cnn):
    x, y = small_arrays
    run = _train((x, y), cnn, strategy="feature", head=(), epochs=2)
    assert len(run.history) == 2 and run.metrics["kept"]["phase"] == "head"
    # the probe's CV estimate is recorded as a linear head's, not claimed for this model
    assert run.metrics["val_protocol"]["cross_validated"] is False
    assert "val_accuracy" not in run.metrics and run.metrics["probe"]["cv"]["n"] >= 10


def test_cli_takes_auto_and_numbers_and_refuses_words(tmp_path, digits_folder):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "graft.cli", "train", str(digits_folder), *SMALL_CLI]
    done = subprocess.run(
        [*cmd, "--strategy", "feature", "--head", "", "--val-split", "auto", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cross-validation" in done.stdout + done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_protocol"]["kind"] == "kfold" and metrics["val_images"] == 0
    bad = subprocess.run([*cmd, "--epochs", "ten"], capture_output=True, text=True)
    assert bad.returncode != 0 and "epochs must be an integer or 'auto'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_practitioner_warnings(small_arrays, cnn):
    import keras

    x, y = small_arrays
    softmax = keras.layers.Dense(4, activation="softmax", name="clf")(cnn.output)
    lines: list[str] = []
    import graft

    graft.train(
        (x[:, :12, :12], y),
        keras.Model(cnn.input, softmax),
        strategy="feature",
        head=(),
        image_size=32,
        verbose=0,
        classes=CLASSES,
        log=lines.append,
    )
    text = "\n".join(lines)
    assert "output (clf) is a softmax" in text and "--cut" in text
    assert "upscaled 2.7x" in text
    assert "weights none" not in text  # pre-trained (given) weights: no random warning
    quiet: list[str] = []
    _train((x, y), cnn, strategy="feature", head=(), log=quiet.append)
    assert not [line for line in quiet if line.startswith("Warning")]
    few: list[str] = []  # an explicit epoch count that leaves the head far from converged
    _train((x, y), cnn, strategy="feature", head=(), epochs=2, log=few.append)
    assert any("epochs 2 give the head 2 optimizer steps" in line for line in few), few


def test_random_frozen_backbone_is_warned(tmp_path, digits_folder):
    import graft

    lines: list[str] = []
    graft.train(
        digits_folder,
        "mobilenet_v2",
        weights="none",
        alpha=0.35,
        image_size=32,
        strategy="feature",
        head=(),
        batch_size=8,
        verbose=0,
        log=lines.append,
    )
    assert any("weights none leaves the backbone random" in line for line in lines)


def test_auto_on_one_image_per_class_trains_the_prior_and_says_why(small_arrays, cnn):
    import graft

    x, y = small_arrays
    one = np.concatenate([np.flatnonzero(y == c)[:1] for c in range(3)])
    lines: list[str] = []
    run = graft.train(
        (x[one], y[one]), cnn, strategy="auto", cut="gap", epochs=1, finetune_epochs=1,
        verbose=0, classes=CLASSES, log=lines.append,
    )  # fmt: skip
    assert run.metrics["auto_search"] == {"chosen": {"strategy": "hybrid"}, "trials": 0}
    assert run.metrics["train_images"] == 3  # every labelled image
    assert any("nothing can be cross-validated or searched" in line for line in lines)


def test_auto_on_few_labels_cross_validates_every_candidate_on_the_same_folds(
    small_arrays, cnn, monkeypatch, tmp_path
):
    """Few labels: no hold-out; feature, hybrid and scratch are each trained on
    every fold's training part and scored on its validation part (never an image they
    trained on), the same folds for all; the winner is trained on every labelled image."""
    import graft

    x, y = small_arrays  # 8 per class: k-fold, not a hold-out
    fold_runs = []
    original = pipeline.execute  # auto imports it when it runs: the spy is seen

    def spy(request):
        if request.out is None and request.val is not None:
            train, val = request.data, request.val
            fold_runs.append(
                (request.settings.get("strategy"), request.settings.get("weights"),
                 train.images, val.images)
            )  # fmt: skip
        return original(request)

    monkeypatch.setattr(pipeline, "execute", spy)
    out = tmp_path / "auto"
    run = graft.train(
        (x, y), cnn, out, strategy="auto", cut="gap", epochs=1, finetune_epochs=1,
        verbose=0, classes=CLASSES, log=lambda _: None,
    )  # fmt: skip
    record = json.loads((out / "auto_search.json").read_text())
    names = [t["settings"]["strategy"] for t in record["trials"]]
    assert names == ["feature", "hybrid", "scratch"]
    k = record["protocol"]["k"]
    assert k == 3 and record["protocol"]["repeats"] == 1
    assert all(t["folds"] == k and len(t["scores"]) == k for t in record["trials"])
    assert len(fold_runs) == 3 * k
    for _, _, train_x, val_x in fold_runs:
        assert len(train_x) + len(val_x) == len(y)
        trained = {a.tobytes() for a in train_x}
        assert not any(v.tobytes() in trained for v in val_x)  # scored on unseen images
    # the same folds for every candidate
    per_candidate = [
        [v.tobytes() for _, _, _, v in fold_runs[i * k : (i + 1) * k]] for i in range(3)
    ]
    assert all(p == per_candidate[0] for p in per_candidate)
    assert fold_runs[-1][1] == "none"  # scratch: fresh weights
    assert all(t["predictions"] == len(y) for t in record["trials"])  # each image once
    best = max(record["trials"], key=lambda t: (t["val_accuracy"], -t["val_loss"], -t["trial"]))
    assert record["best_trial"] == best["trial"]
    chosen = record["trials"][record["chosen_trial"] - 1]
    assert record["chosen"] == chosen["settings"]
    assert chosen["val_accuracy"] >= best["val_accuracy"] - record["standard_error"] - 1e-9
    assert run.metrics["train_images"] == len(y) and run.metrics["val_images"] == 0


def test_auto_chooses_the_cut_inside_each_fold_when_none_is_given(
    small_arrays, cnn, monkeypatch, tmp_path
):
    """``strategy="auto"`` without a cut (issue 23): every transfer candidate measures
    where to cut on the images of its own fold's training part (never its validation
    part), scratch trains the whole model with fresh weights, and the final run (a
    transfer choice) measures on every labelled image and records its choice."""
    import yaml

    import graft

    x, y = small_arrays
    runs = []
    original = pipeline.execute

    def spy(request):
        run = original(request)
        transfer = run.metrics.get("transfer")
        runs.append(
            (request.out is None, request.settings.get("weights"), request.settings.get("cut"),
             _count(request.data), None if transfer is None else transfer["images"])
        )  # fmt: skip
        return run

    monkeypatch.setattr(pipeline, "execute", spy)
    out = tmp_path / "auto"
    run = graft.train(
        (x, y), cnn, out, strategy="auto", epochs=1, finetune_epochs=1, verbose=0,
        classes=CLASSES, log=lambda _: None,
    )  # fmt: skip
    folds = [r for r in runs if r[0]]
    transfer_runs = [r for r in folds if r[1] != "none"]
    scratch_runs = [r for r in folds if r[1] == "none"]  # fresh weights
    assert len(transfer_runs) == 2 * len(scratch_runs) > 0
    for *_, cut, trained_on, measured_on in transfer_runs:
        assert cut == "auto" and measured_on == trained_on < len(y)
    assert all(cut is None and measured is None for *_, cut, _, measured in scratch_runs)
    (final,) = [r for r in runs if not r[0]]
    record = json.loads((out / "auto_search.json").read_text())
    if record["chosen"]["strategy"] == "scratch":
        assert final[1:] == ("none", None, len(y), None)
    else:
        assert final[2:] == ("auto", len(y), len(y))
        transfer = run.metrics["transfer"]
        config = yaml.safe_load((out / "config.yaml").read_text())
        assert config["cut"] == (None if transfer["cut"] == transfer["output"] else transfer["cut"])


def _count(data) -> int:
    """Images of a run's data: an adapted subset (a fold) or the ``(x, y)`` given."""
    return len(data.images) if hasattr(data, "images") else len(data[1])


def _trial(i, strategy, accuracy, loss=1.0, predictions=10):
    return {"trial": i, "settings": {"strategy": strategy}, "val_accuracy": accuracy,
            "val_loss": loss, "predictions": predictions}  # fmt: skip


@pytest.mark.parametrize(
    ("scores", "predictions", "expected"),
    [
        # 2 images per class, 10 validation predictions: one image (0.1) is noise
        ((0.5, 0.5, 0.6), 10, "hybrid"),
        ((0.6, 0.5, 0.4), 10, "hybrid"),
        # clearly better beyond one standard error: the measurement wins
        ((0.5, 0.5, 0.9), 10, "scratch"),
        ((0.86, 0.86, 0.94), 250, "scratch"),
        ((0.9, 0.7, 0.6), 50, "feature"),
        # ties at a perfect score: the order decides (and the SE is not 0)
        ((1.0, 1.0, 1.0), 10, "hybrid"),
    ],
)
def test_few_label_choice_is_the_one_standard_error_rule(scores, predictions, expected):
    records = [
        _trial(i, s, a, predictions=predictions)
        for i, (s, a) in enumerate(zip(("feature", "hybrid", "scratch"), scores), start=1)
    ]
    chosen, best, se = autostrategy.choose_by_folds(records)
    assert chosen["settings"]["strategy"] == expected
    assert best["val_accuracy"] == max(scores)
    assert 0 < se < 0.2


@pytest.mark.parametrize("truth", ["symmetric", "caffe"])
def test_graft_train_on_a_model_object_measures_its_true_scaling(truth, tmp_path):
    """Through graft.train: a keras.Model object (no BN, no scaling layer, so no evidence)
    gets the scaling it was calibrated for, measured on the labelled images; the choice
    and every candidate's score land in metrics.json and the settings of config.yaml."""
    import yaml

    from test_few_shot import calibrated, gratings

    x, y = gratings()
    model = calibrated(truth, x, with_bn=False)
    out = tmp_path / "run"
    import graft

    run = graft.train(
        (x.astype("uint8"), y), model, out, strategy="feature", head=(), verbose=0,
        classes=["a", "b", "c", "d"], log=lambda _: None,
    )  # fmt: skip
    inputs = run.metrics["inputs"]
    assert inputs["scaling"] == truth and inputs["how"]["scaling"] == "measured"
    assert inputs["how"]["pool"] == "measured" and len(inputs["candidates"]) > 5
    assert run.config.preprocess == truth and run.config.pool == inputs["pool"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["preprocess"] == truth and saved["pool"] == inputs["pool"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["inputs"]["candidates"][0]["mean"] >= on_disk["inputs"]["candidates"][-1]["mean"]


def test_a_hidden_head_trains_a_budget_of_optimizer_steps_not_ten_epochs(small_arrays, cnn):
    x, y = small_arrays
    keep = np.concatenate([np.flatnonzero(y == c)[:4] for c in range(3)])  # 12 images
    run = _train((x[keep], y[keep]), cnn, strategy="feature", head=(16,), batch_size=8)
    budget = run.metrics["head_budget"]
    assert budget["total_steps"] >= 300 and budget["steps_per_epoch"] == 2  # 12 at batch 8
    assert len(run.history) == budget["epochs"] == 150  # one pass an epoch: exact resume
    assert "probe" in run.metrics and run.metrics["val_protocol"]["cross_validated"] is False
    given = _train((x[keep], y[keep]), make_cnn(), strategy="feature", head=(16,), epochs=3)
    assert len(given.history) == 3 and "head_budget" not in given.metrics


def test_config_replays_the_measured_inputs_and_solves_the_head_again(
    tmp_path, digits_folder, cnn_file, capsys
):
    import keras

    from graft import cli

    first = tmp_path / "first"
    args = ["train", str(digits_folder), "-b", str(cnn_file), "--cut", "block3_pool"]
    assert cli.main([*args, "--strategy", "feature", "--head", "", "--out", str(first)]) == 0
    measured = json.loads((first / "metrics.json").read_text())
    assert measured["inputs"]["how"]["pool"] in ("measured", "prior") and not measured["epochs"]
    again = tmp_path / "again"
    assert cli.main(["train", "--config", str(first / "config.yaml"), "--out", str(again)]) == 0
    replayed = json.loads((again / "metrics.json").read_text())
    assert "inputs" not in replayed  # preprocess and pool come from config.yaml: no search
    assert replayed["epochs"] == 0 and replayed["probe"]["C"] == measured["probe"]["C"]
    assert replayed["val_accuracy"] == measured["val_accuracy"]
    a, b = (keras.saving.load_model(d / "model.keras") for d in (first, again))
    for x, y in zip(
        a.get_layer("head_output").get_weights(), b.get_layer("head_output").get_weights()
    ):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    capsys.readouterr()


def test_the_default_head_is_the_solved_linear_probe(small_arrays, cnn):
    x, y = small_arrays
    run = _train((x, y), cnn, strategy="feature")  # no head, no epochs given
    assert run.config.head == () and run.metrics["epochs"] == 0 and not run.history
    assert run.metrics["val_protocol"]["of"] == "the head"


def test_fine_tuning_gets_a_budget_of_optimizer_steps_not_ten_epochs(small_arrays, cnn):
    from graft.config.budget import MIN_FINETUNE_STEPS, finetune_epochs

    x, y = small_arrays
    run = _train((x, y), cnn, strategy="hybrid", batch_size=8)  # LP-FT, fine-tuning auto
    expected = finetune_epochs(len(y), 8)
    assert expected * 3 >= MIN_FINETUNE_STEPS and expected > 10  # 3 batches per pass
    assert [r["phase"] for r in run.history] == ["finetune"] * expected
    given = _train((x, y), make_cnn(), strategy="hybrid", batch_size=8, finetune_epochs=2)
    assert len(given.history) == 2


@pytest.mark.parametrize("stop_at", [20, 70])
def test_a_budgeted_run_resumes_exactly(tmp_path, monkeypatch, small_arrays, stop_at):
    """A hidden head on a step budget (on cached features) then fine-tuning on a step
    budget: stopped inside the head phase (20) or inside fine-tuning (70), the resumed
    run ends where the uninterrupted one did."""
    import graft
    from conftest import stop_after
    from graft.training.checkpoints import Interrupted
    from test_resume import _assert_same_history_and_weights

    x, y = small_arrays
    keep = np.concatenate([np.flatnonzero(y == c)[:4] for c in range(3)])  # 12 images
    data = (x[keep], y[keep])
    settings = dict(
        cut="gap", strategy="hybrid", head=(8,), batch_size=2, seed=3, deterministic=True,
        unfreeze="blocks:1", classes=CLASSES, verbose=0, log=lambda _: None,
    )  # fmt: skip
    ref = tmp_path / "reference"
    done = graft.train(data, make_cnn(seed=0), ref, **settings)
    assert done.metrics["head_budget"]["epochs"] == 50 == len(done.history) // 2  # 6 a pass
    run = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        stop_after(patch, stop_at)
        with pytest.raises(Interrupted):
            graft.train(data, make_cnn(seed=0), run, **settings)
    graft.train(data, resume=run, verbose=0, log=lambda _: None)
    _assert_same_history_and_weights(run, ref)


def test_the_report_of_a_cross_validated_run_shows_out_of_fold_predictions(
    small_arrays, cnn, tmp_path
):
    """No hold-out: the confusion matrix, worst errors and calibration come from the
    probe's out-of-fold predictions of every labelled image, the same that a probe fitted
    by hand on each fold's training part gives."""
    x, y = small_arrays
    out = tmp_path / "run"
    run = _train((x, y), cnn, out=out, strategy="feature", log=lambda _: None)
    ev = json.loads((out / "metrics.json").read_text())["evaluation"]
    assert ev["split"].startswith("validation (out-of-fold, 5-fold cross-validated")
    assert ev["images"] == len(y)  # every labelled image, each predicted out of fold
    assert (out / "plots" / "confusion_matrix.png").is_file()
    features = model_utils.features_model(run.model).predict(x, verbose=0)
    folds = plan_folds(y, seed=0)
    _, oof = cross_validate(
        np.asarray(features, "float64"), y, folds.splits, run.metrics["probe"]["C"], 3
    )
    assert ev["accuracy"] == pytest.approx(float(np.mean(oof.argmax(1) == y)), abs=1e-4)
    html = (out / "report.html").read_text("utf-8")
    assert "out-of-fold" in html


def test_a_measured_cut_with_fewer_blocks_than_unfreeze_asks_trains_the_blocks_it_keeps():
    """``cut="auto"`` may keep fewer blocks than the strategy's ``blocks:2``: the run then
    fine-tunes every block the cut keeps and says so; other specs and custom plans are
    left as given (a spec that does not fit is still the one-line error)."""
    from graft.config.settings import TrainConfig

    lines: list[str] = []
    hybrid = TrainConfig(backbone="mobilenet_v2", strategy="hybrid")
    assert hybrid.unfreeze == "blocks:2"
    assert pipeline.unfreeze_within(hybrid, 1, lines.append) == "blocks:1"
    assert lines == [
        "Unfreeze: blocks:2 asks for more blocks than the measured cut keeps (1); "
        "fine-tuning blocks:1"
    ]
    assert pipeline.unfreeze_within(hybrid, 2, lines.append) is None
    assert (
        pipeline.unfreeze_within(
            TrainConfig(backbone="mobilenet_v2", unfreeze="all"), 1, lines.append
        )
        is None
    )
    assert len(lines) == 1

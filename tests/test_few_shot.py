"""Few-shot mechanisms: validation folds, the converged linear probe, the head's step
budget, and input scaling / pooling chosen by measurement (issue 22)."""

from __future__ import annotations

from collections import Counter

import keras
import numpy as np
import pytest

from conftest import IMAGE
from graft.config.budget import MIN_HEAD_STEPS, head_budget
from graft.core.model import pooling_layers
from graft.data.folds import plan_folds
from graft.training import candidates as cand
from graft.training.probe import fit_probe


def _labels(counts):
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)])


# ---- folds -------------------------------------------------------------------------------


@pytest.mark.parametrize("counts", [(2, 2, 2), (2, 3, 4), (4, 4, 4, 4), (10, 10), (20, 30)])
def test_kfold_never_scores_an_image_it_trained_on_and_validates_each_once_per_repeat(counts):
    y = _labels(counts)
    folds = plan_folds(y, seed=3)
    assert folds.kind == "kfold", folds.line()
    assert folds.k == min(5, min(counts))
    assert len(folds.splits) == folds.k * folds.repeats >= 10
    for r in range(folds.repeats):
        seen = Counter()
        for train_idx, val_idx in folds.splits[r * folds.k : (r + 1) * folds.k]:
            assert not set(train_idx) & set(val_idx)
            assert set(train_idx) | set(val_idx) == set(range(len(y)))
            seen.update(val_idx.tolist())
            # stratified: every class in training; each class's validation share within one
            for c, n in enumerate(counts):
                assert (y[train_idx] == c).any()
                assert abs((y[val_idx] == c).sum() - n / folds.k) < 1
        assert seen == Counter(range(len(y))), "every image validated exactly once per repeat"
    # repeats are different shuffles
    if folds.repeats > 1:
        assert not all(
            np.array_equal(a[1], b[1])
            for a, b in zip(folds.splits[: folds.k], folds.splits[folds.k : 2 * folds.k])
        )


def test_folds_are_deterministic_in_labels_and_seed():
    y = _labels((3, 4, 5))
    a, b, c = plan_folds(y, seed=1), plan_folds(y, seed=1), plan_folds(y, seed=2)
    assert all(np.array_equal(p[1], q[1]) for p, q in zip(a.splits, b.splits))
    assert not all(np.array_equal(p[1], q[1]) for p, q in zip(a.splits, c.splits))


def test_policy_thresholds():
    # A hold-out only when every class keeps >= 5 validation images (0.2 * 23 rounds to 5).
    hold = plan_folds(_labels((23, 40, 100)))
    assert hold.kind == "holdout" and hold.k == 1, hold.line()
    train_idx, val_idx = hold.splits[0]
    y = _labels((23, 40, 100))
    assert not set(train_idx) & set(val_idx)
    assert [int((y[val_idx] == c).sum()) for c in range(3)] == [5, 8, 20]
    assert "hold-out" in hold.line() and "\n" not in hold.line()
    small = plan_folds(_labels((22, 40, 100)))
    assert small.kind == "kfold" and small.k == 5 and "fewer than 5" in small.line()
    tiny = plan_folds(_labels((2, 40)))
    assert (tiny.k, tiny.repeats) == (2, 5)
    three = plan_folds(_labels((3, 3)))
    assert (three.k, three.repeats) == (3, 4)
    one = plan_folds(_labels((1, 5, 5)))
    assert one.kind == "none" and not one.splits and not one.can_validate
    assert "1 labelled image" in one.line() and "cannot" in one.line()
    assert plan_folds(_labels((30, 30)), val_split=0).kind == "none"
    given = plan_folds(_labels((4, 4)), val_split=0.5)  # an explicit split is obeyed
    assert given.kind == "holdout" and len(given.splits[0][1]) == 4
    with pytest.raises(ValueError, match="val_split"):
        plan_folds(_labels((4, 4)), val_split="sometimes")


# ---- head budget -------------------------------------------------------------------------


def test_head_budget_counts_optimizer_steps():
    tiny = head_budget(10, 16)  # one step a pass: one pass an epoch, 300 epochs
    assert (tiny.epochs, tiny.steps_per_epoch, tiny.total_steps) == (MIN_HEAD_STEPS, 1, 300)
    medium = head_budget(500, 32)  # 16 steps a pass: 19 passes
    assert medium.total_steps >= MIN_HEAD_STEPS and medium.epochs == 19
    large = head_budget(50_000, 32)  # ten passes already exceed the floor: as before
    assert large.epochs == 10 and large.total_steps == 10 * 1563
    given = head_budget(10, 16, epochs=7)
    assert (given.epochs, given.total_steps) == (7, 7)
    assert "as given" in given.reason and "optimizer steps" in tiny.reason
    with pytest.raises(ValueError, match="epochs"):
        head_budget(10, 16, epochs=0)


# ---- linear probe ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_features():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype("float64") * 7.0 + 3.0, d.target  # unstandardised on purpose


@pytest.mark.parametrize("classes", [10, 2])
def test_probe_written_into_keras_predicts_what_sklearn_predicts(digit_features, classes):
    from sklearn.linear_model import LogisticRegression

    x, y = digit_features
    mask = y < classes
    x, y = x[mask][:300], y[mask][:300]
    train, test = slice(0, 200), slice(200, 300)
    folds = plan_folds(y[train], seed=0)
    probe = fit_probe(x[train], y[train], folds)
    assert probe.cv is not None and probe.n_train == 200 and probe.C in probe.grid
    # sklearn on standardised features, the same C: the reference
    mean, std = x[train].mean(0), x[train].std(0)
    std[std < 1e-12] = 1.0
    ref = LogisticRegression(C=probe.C, max_iter=2000).fit((x[train] - mean) / std, y[train])
    expected = ref.predict_proba((x[test] - mean) / std)
    np.testing.assert_allclose(probe.predict_proba(x[test]), expected, atol=1e-5)
    inputs = keras.Input((x.shape[1],))
    head = keras.layers.Dense(classes, activation="softmax", name="head_output")
    model = keras.Model(inputs, head(inputs))
    probe.write(head)
    got = model.predict(x[test].astype("float32"), verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.mean(got.argmax(1) == y[test]) > 0.9


def test_probe_refits_on_every_labelled_image_and_scores_out_of_fold(digit_features):
    x, y = digit_features
    idx = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(5)])  # 2 per class
    folds = plan_folds(y[idx])
    probe = fit_probe(x[idx], y[idx], folds)
    assert probe.n_train == 10
    # refit on all: the final probe classifies every labelled image (a probe that
    # dropped a fold's images would not, at 2 images per class), and it differs from
    # every fold's probe
    assert (probe.predict_proba(x[idx]).argmax(1) == y[idx]).all()
    assert probe.out_of_fold.shape == (10, 5) and probe.cv.n == len(folds.splits) == 10
    assert "refit on all 10" in probe.line()
    # no image in its own fold's score: on pure noise the refit probe fits every image
    # (in-sample accuracy 1.0) while the cross-validated score stays near chance
    noise = np.random.default_rng(0).normal(size=(10, 64))
    blind = fit_probe(noise, y[idx], folds)
    assert (blind.predict_proba(noise).argmax(1) == y[idx]).all()
    assert blind.cv.mean < 0.5, blind.line()


def test_probe_without_folds_uses_the_default_c(digit_features):
    x, y = digit_features
    idx = np.concatenate([np.flatnonzero(y == c)[:1] for c in range(3)])
    probe = fit_probe(x[idx], y[idx], plan_folds(y[idx]), num_classes=4)
    assert probe.cv is None and probe.C == 0.1 and "default" in probe.reason
    assert probe.kernel.shape == (64, 4) and probe.predict_proba(x[idx])[:, 3].max() < 1e-6


# ---- input candidates by measurement -------------------------------------------------------

SCALINGS = ("unit", "symmetric", "torch", "caffe")
#: Base colour of the generated images (per channel, so caffe's channel swap matters).
BASE = np.array([150.0, 110.0, 90.0])


def gratings(n_per_class=8, classes=4, seed=0):
    """Oriented gratings of low contrast around a coloured mid-grey: the information is
    in graded intensities (no shape survives a saturated first layer)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:IMAGE, 0:IMAGE] / IMAGE
    images, labels = [], []
    for c in range(classes):
        angle = np.pi * c / classes
        for _ in range(n_per_class):
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * 4 * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
            im = BASE + 25 * wave[..., None] + rng.normal(0, 6, (IMAGE, IMAGE, 3))
            images.append(np.clip(im, 0, 255))
            labels.append(c)
    return np.asarray(images, "float32"), np.asarray(labels)


def calibrated(truth: str, images, with_bn: bool) -> keras.Model:
    """A backbone that expects ``truth`` scaling, as one pre-trained on it would.

    Without BN: its first layer standardises each channel with the statistics of the
    images scaled as ``truth`` and squashes (tanh at gain 4), so any other scaling lands
    in tanh's flat tails. With BN: a 1x1 identity conv and a BatchNormalization whose
    moving statistics are those of the images scaled as ``truth``.
    """
    keras.utils.set_random_seed(0)
    scaled = cand.scale_images(images, truth, 3)
    mean, std = scaled.mean(axis=(0, 1, 2)), scaled.std(axis=(0, 1, 2))
    inputs = keras.Input((IMAGE, IMAGE, 3))
    first = keras.layers.Conv2D(3, 1, name="stem", activation=None if with_bn else "tanh")
    h = first(inputs)
    if with_bn:
        first.set_weights([np.eye(3).reshape(1, 1, 3, 3), np.zeros(3)])
        bn = keras.layers.BatchNormalization(name="stem_bn")
        h = keras.layers.Activation("tanh")(bn(h))
        bn.set_weights([np.ones(3), np.zeros(3), mean, std**2])
    else:
        gain = 4.0
        first.set_weights([np.diag(gain / std).reshape(1, 1, 3, 3), -gain * mean / std])
    h = keras.layers.Conv2D(16, 5, strides=2, activation="relu", name="conv")(h)
    return keras.Model(inputs, h, name=f"expects_{truth}")


def _counting():
    calls = []

    def forward(model, x):
        calls.append(len(x))
        return model.predict(x, verbose=0)

    return calls, forward


@pytest.fixture(scope="module")
def grating_data():
    return gratings()


@pytest.mark.parametrize("truth", SCALINGS)
def test_measurement_picks_the_true_scaling_of_a_model_without_bn(grating_data, truth):
    x, y = grating_data
    model = calibrated(truth, x, with_bn=False)
    folds = plan_folds(y, seed=0)
    calls, forward = _counting()
    choice = cand.choose_inputs(model, x, y, folds, pool="avg", grid=(0.1, 1.0), forward=forward)
    assert choice.how == {"scaling": "measured", "pool": "given"}
    assert choice.evidence["choice"] is None  # no BN, no scaling layer: nothing to infer
    assert choice.scaling == truth, choice.line()
    assert len(calls) == choice.forward_passes == 5  # one pass per scaling candidate
    worst = choice.candidates[-1]
    assert worst.score.mean < choice.best.score.mean
    assert {c.scaling for c in choice.candidates} == {"none", *SCALINGS}
    assert choice.as_dict()["candidates"][0]["mean"] == round(choice.best.score.mean, 4)


@pytest.mark.parametrize("truth", ["unit", "caffe"])
def test_clear_bn_evidence_decides_without_a_search(grating_data, truth):
    x, y = grating_data
    model = calibrated(truth, x, with_bn=True)
    calls, forward = _counting()
    choice = cand.choose_inputs(model, x, y, plan_folds(y), pool="avg", forward=forward)
    assert choice.scaling == truth and choice.how["scaling"] == "evidence", choice.line()
    assert not calls and not choice.candidates  # nothing left to measure: no pass at all
    assert "stem_bn" in choice.evidence["source"]


def test_the_candidate_the_evidence_ranks_worst_is_never_chosen(grating_data):
    from graft.core.scaling import Evidence

    x, y = grating_data
    model = calibrated("symmetric", x, with_bn=False)  # measurement would pick symmetric
    weak = Evidence(None, "a BN layer that does not single out one scaling", {
        "none": 1.0, "unit": 1.2, "symmetric": 2.0, "torch": 1.5, "caffe": 1.1,
    })  # fmt: skip
    choice = cand.choose_inputs(model, x, y, plan_folds(y), pool="avg", evidence=weak)
    assert "symmetric" not in {c.scaling for c in choice.candidates}
    assert choice.scaling != "symmetric" and choice.how["scaling"] == "measured"


def test_without_folds_the_priors_decide(grating_data):
    from graft.core.scaling import Evidence

    x, y = grating_data
    idx = np.array([0, 8, 16, 24])  # one image per class
    model = calibrated("unit", x, with_bn=False)
    weak = Evidence(None, "unclear", {"none": 3.0, "unit": 1.0, "symmetric": 1.5})
    calls, forward = _counting()
    choice = cand.choose_inputs(
        model, x[idx], y[idx], plan_folds(y[idx]), evidence=weak, forward=forward
    )
    assert (choice.scaling, choice.how["scaling"]) == ("unit", "prior")  # the evidence's best
    assert choice.pool == "avg" and choice.how["pool"] == "prior"  # a 14x14 map: not small
    assert not calls and not choice.candidates
    assert cand.pool_prior((4, 4, 128)) == "flatten" and cand.pool_prior((3, 3, 2048)) == "avg"
    assert cand.pool_prior((14, 14, 8)) == "avg" and cand.pool_prior((49, 64)) == "mean"


def quadrants(n_per_class=6, seed=0):
    """A bright square in one of four quadrants: global pooling cannot tell where."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(4):
        for _ in range(n_per_class):
            im = rng.normal(60, 8, (IMAGE, IMAGE, 3))
            r, col = divmod(c, 2)
            top, left = r * 16 + rng.integers(2, 6), col * 16 + rng.integers(2, 6)
            im[top : top + 8, left : left + 8] += rng.uniform(80, 140)
            images.append(np.clip(im, 0, 255))
            labels.append(c)
    return np.asarray(images, "float32"), np.asarray(labels)


def test_a_small_map_where_flatten_beats_avg_picks_flatten_and_the_head_matches():
    x, y = quadrants()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((IMAGE, IMAGE, 3))
    h = keras.layers.Conv2D(4, 1, activation="relu", name="mix")(inputs)
    backbone = keras.Model(inputs, keras.layers.AveragePooling2D(8)(h))  # a 4x4x4 map
    folds = plan_folds(y, seed=1)
    calls, forward = _counting()
    choice = cand.choose_inputs(backbone, x, y, folds, scaling="unit", forward=forward)
    scores = {c.pool: c.score.mean for c in choice.candidates}
    assert set(scores) == {"avg", "max", "avgmax", "flatten"} and len(calls) == 1
    assert choice.pool == "flatten" and choice.features == 64, choice.line()
    assert scores["flatten"] >= scores["avg"] + 0.3, scores
    # The NumPy pooling is the Keras pooling: a probe fitted here, written into the head of
    # the grafted layout, predicts the same.
    for pool in ("flatten", "avgmax", "max", "avg"):
        fmap = backbone.predict(cand.scale_images(x, "unit", 3), verbose=0)
        probe = fit_probe(cand.pool_features(fmap, pool), y, folds)
        image = keras.Input((IMAGE, IMAGE, 3))
        z = keras.layers.Rescaling(1 / 255)(image)
        z = backbone(z)
        for layer in pooling_layers(tuple(z.shape), pool):
            z = layer(z)
        head = keras.layers.Dense(4, activation="softmax", name="head_output")
        grafted = keras.Model(image, head(z))
        probe.write(head)
        np.testing.assert_allclose(
            grafted.predict(x, verbose=0),
            probe.predict_proba(cand.pool_features(fmap, pool)),
            atol=1e-5,
        )
    assert "flatten" in choice.line() and choice.as_dict()["how"]["pool"] == "measured"


def test_flatten_is_no_candidate_beyond_the_feature_cap():
    assert "flatten" not in cand.pool_candidates((16, 16, 64))  # 16,384 features
    assert "flatten" in cand.pool_candidates((8, 8, 128))  # 8,192
    assert cand.pool_candidates((2048,)) == ("identity",)


# ---- bench/few_shot.py -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "few_shot.py"
    spec = importlib.util.spec_from_file_location("few_shot_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_subsets_are_paired_and_nested(bench):
    y = np.repeat(np.arange(10), 80)
    train, test, labels = bench.draw(y, (5, 6, 7, 8, 9), seed=0)
    assert set(train(2)) < set(train(4)) < set(train(50))  # the same images, K growing
    assert not set(train(bench.MAX_K)) & set(test) and len(test) == 5 * 30
    assert np.array_equal(train(2), bench.draw(y, (5, 6, 7, 8, 9), seed=0)[0](2))
    assert bench.parse_rows("hand,graft-auto") == (*bench.HAND, "graft-auto")
    with pytest.raises(SystemExit, match="Unknown row"):
        bench.parse_rows("nope")
    rows = [
        {"split": "s", "K": k, "row": "probe", "seed": s, "test_accuracy": a, "seconds": 1}
        for k, s, a in ((2, 0, 0.5), (2, 1, 0.7), (10, 0, 0.9))
    ]
    text = bench.table(rows)
    assert "| s | probe | 0.600 ± 0.141 | 0.900 |" in text


def test_no_folds_at_all_means_priors(grating_data):
    x, y = grating_data
    model = calibrated("unit", x, with_bn=True)
    choice = cand.choose_inputs(model, x, y, None)
    assert choice.scaling == "unit" and choice.how == {"scaling": "evidence", "pool": "prior"}


def test_a_hidden_head_gets_its_output_layer_re_solved_on_the_hidden_activations(digit_features):
    """The documented design for ``hidden=(256,)``: the probe solves the last layer."""
    x, y = digit_features
    x, y = x[:200].astype("float32"), y[:200]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(256, activation="relu", name="head_dense_1")(inputs)
    dropped = keras.layers.Dropout(0.2, name="head_dropout")(hidden)
    output = keras.layers.Dense(10, activation="softmax", name="head_output")
    model = keras.Model(inputs, output(dropped))
    acts = keras.Model(inputs, hidden).predict(x, verbose=0)  # dropout off at inference
    probe = fit_probe(acts, y, plan_folds(y), num_classes=10)
    probe.write(model.get_layer("head_output"))
    got = model.predict(x, verbose=0)
    np.testing.assert_allclose(got, probe.predict_proba(acts), atol=1e-5)
    assert np.mean(got.argmax(1) == y) > 0.95

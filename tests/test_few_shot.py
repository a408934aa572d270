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
    tiny = head_budget(10, 16)
    assert tiny.total_steps >= MIN_HEAD_STEPS and tiny.epochs <= 50 and tiny.repeats > 1
    assert tiny.steps_per_epoch == tiny.repeats * 1 and tiny.patience >= 3
    medium = head_budget(500, 32)  # 16 steps a pass: 19 passes
    assert medium.repeats == 1 and medium.total_steps >= MIN_HEAD_STEPS
    assert medium.epochs == 19
    large = head_budget(50_000, 32)  # ten passes already exceed the floor: as before
    assert large.epochs == 10 and large.total_steps == 10 * 1563
    given = head_budget(10, 16, epochs=7)
    assert (given.epochs, given.total_steps, given.patience) == (7, 7, None)
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

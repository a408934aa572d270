"""Per-phase schedules (lr per epoch as the formula says) and early stopping that
restores the phase's best weights."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from graft.config.strategies import Phase
from graft.core import schedules
from graft.core.backbones import resolve
from graft.core.model import HeadConfig, build_model
from graft.core.optim import sub_optimizers
from graft.data.pipelines import array_pipeline
from graft.training.trainer import Trainer


@pytest.fixture
def cnn(cnn_file):
    return resolve(str(cnn_file), cut="block3_pool", preprocess="unit")


class _Spy(keras.callbacks.Callback):
    """Learning rates of every sub-optimizer and all weights at the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.lrs, self.weights, self.val_loss = [], [], []

    def on_epoch_end(self, epoch, logs=None):
        opts = sub_optimizers(self.model.optimizer)
        self.lrs.append(sorted(float(o.learning_rate.numpy()) for o in opts))
        self.weights.append(self.model.get_weights())
        self.val_loss.append((logs or {}).get("val_loss"))


def _train(cnn, arrays, phase, val=None, hidden=(8,)):
    x, y = arrays
    keras.utils.set_random_seed(0)
    model = build_model(cnn, 3, HeadConfig(hidden, dropout=0.0))
    spy = _Spy()
    trainer = Trainer(model, cnn.blocks, verbose=0, log=lambda _: None, callbacks=[spy])
    result = trainer.fit([phase], array_pipeline(x, y, 8), val)
    return model, spy, result


def test_cosine_with_warmup_follows_the_formula_for_every_sub_optimizer(cnn, small_arrays):
    lr, blr, epochs, warm = 0.01, 0.001, 5, 2
    phase = Phase("t", "blocks:1", epochs, lr, blr, "sgd", schedule="cosine", warmup_epochs=warm)
    _, spy, result = _train(cnn, small_arrays, phase)
    expected = [(e + 1) / warm for e in range(warm)] + [
        0.5 * (1 + math.cos(math.pi * (e - warm) / (epochs - warm))) for e in range(warm, epochs)
    ]
    np.testing.assert_allclose([r["lr"] for r in result.history], [lr * f for f in expected])
    np.testing.assert_allclose(
        [r["backbone_lr"] for r in result.history], [blr * f for f in expected]
    )
    # what the optimizers really used, not only what the history says
    np.testing.assert_allclose(spy.lrs, [[blr * f, lr * f] for f in expected], rtol=1e-6)


def test_onecycle_warms_up_to_the_peak_then_anneals():
    epochs = 11
    got = [schedules.factor("onecycle", e, epochs) for e in range(epochs)]
    assert got[0] == pytest.approx(1 / 25)
    assert got[3] == pytest.approx(1.0)  # t = 0.3: the peak
    assert got[-1] == pytest.approx(1 / (25 * 1e4))
    t = 7 / 10  # an annealing epoch: cosine from 1 down to 1/(25e4)
    final = 1 / 25e4
    assert got[7] == pytest.approx(
        final + (1 - final) * (1 + math.cos(math.pi * (t - 0.3) / 0.7)) / 2
    )
    assert all(a < b for a, b in zip(got[:3], got[1:4])) and all(
        a > b for a, b in zip(got[3:-1], got[4:])
    )


def test_plateau_halves_the_rate_after_patience_epochs_without_improvement(cnn, small_arrays):
    # A learning rate so small that nothing changes: the loss never improves.
    phase = Phase("t", "none", 5, 1e-20, optimizer="sgd", schedule="plateau")
    _, spy, result = _train(cnn, small_arrays, phase)
    assert schedules.PLATEAU_PATIENCE == 2 and schedules.PLATEAU_FACTOR == 0.5
    np.testing.assert_allclose(
        [r["lr"] for r in result.history], [1e-20 * f for f in (1, 1, 1, 0.5, 0.5)]
    )
    np.testing.assert_allclose([s[0] for s in spy.lrs], [r["lr"] for r in result.history])


def test_early_stopping_restores_the_best_epoch_of_the_phase(cnn, small_arrays):
    x, y = small_arrays
    wrong = array_pipeline(x, (y + 1) % 3, 8)
    # A linear probe at a learning rate too high for it: the validation loss rises after
    # the first epoch, so the best epoch is an early one.
    phase = Phase("t", "none", 8, 0.5, optimizer="sgd", early_stop=2)
    model, spy, result = _train(cnn, small_arrays, phase, val=wrong, hidden=())
    run = len(result.history)
    assert run < 8 and result.phases[0].epochs_run == run
    best = int(np.argmin(spy.val_loss))
    assert best < run - 1  # the last epoch was not the best one
    final = model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(final, spy.weights[best]))
    assert not all(np.array_equal(a, b) for a, b in zip(final, spy.weights[-1]))


def test_unknown_schedule_is_one_clear_error():
    from graft.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="cosine"):
        Phase("t", schedule="cosin")


def test_policy_state_round_trips_through_json():
    import json

    phase = Phase("t", "none", 6, lr=0.1, schedule="plateau", early_stop=2)
    position = schedules.Position(index=2, start=4, done=3)
    assert position.phase_epoch(7) == 3 and position.first_run_epoch == 7
    found = schedules.callbacks(phase, position)
    assert set(found) == {"schedule", "early_stop"}
    sched = found["schedule"]
    sched._base, sched._scale, sched._best, sched._wait = [0.1], 0.5, 0.25, 1
    again = schedules.callbacks(phase, position)["schedule"]
    again.load_state(json.loads(json.dumps(sched.state())))
    assert again.state() == sched.state()

"""Per-phase learning-rate schedules, plateau reduction and early stopping.

A schedule is a factor ``f(e)`` on every learning rate of the phase at phase epoch
``e`` (0-based, ``E`` epochs), applied at the start of each epoch to every
sub-optimizer (a ``MultiOptimizer`` has no single learning rate), so per-block ratios
stay as they are:

``constant``
    ``f = 1``.
``cosine``
    Linear warm-up over ``W = warmup_epochs`` epochs, ``f = (e + 1) / W``, then cosine
    decay to zero, ``f = (1 + cos(pi * (e - W) / (E - W))) / 2``.
``onecycle``
    Smith's one-cycle (as in fastai/PyTorch, ``pct_start = 0.3``, ``div = 25``,
    ``final_div = 1e4``): with ``t = e / (E - 1)``, cosine from ``1/25`` up to 1 over
    ``t <= 0.3``, then cosine down to ``1/(25 * 1e4)``.
``plateau``
    Like ``keras.callbacks.ReduceLROnPlateau``: the factor halves whenever the
    monitored loss has not improved for :data:`PLATEAU_PATIENCE` epochs.

Early stopping is ``keras.callbacks.EarlyStopping`` with ``restore_best_weights``: the
phase ends with its best epoch's weights, so the next phase starts from them.

Both are *policies*: Keras callbacks placed at a :class:`Position` inside their phase,
with ``state()``/``load_state()`` so a resumed phase continues exactly where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from graft.config.strategies import Phase
from graft.core.optim import sub_optimizers

PCT_START = 0.3
DIV_FACTOR = 25.0
FINAL_DIV_FACTOR = 1e4
PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2


@dataclass(frozen=True)
class Position:
    """Where a phase is in a run: the one owner of "epoch inside a phase".

    Attributes:
        index: The phase's index in the plan (1-based).
        start: The run epoch (0-based) at which the phase's first epoch ran.
        done: Epochs of the phase completed before this fit (a resumed phase).
    """

    index: int
    start: int
    done: int = 0

    def phase_epoch(self, run_epoch: int) -> int:
        """The 0-based phase epoch of the 0-based ``run_epoch``."""
        return run_epoch - self.start

    @property
    def first_run_epoch(self) -> int:
        """The run epoch (0-based) this fit starts at."""
        return self.start + self.done


def factor(schedule: str, epoch: int, epochs: int, warmup_epochs: int = 0) -> float:
    """The learning-rate factor of a schedule at phase epoch ``epoch`` (0-based).

    Args:
        schedule: ``constant``, ``cosine`` or ``onecycle`` (``plateau`` reacts to the
            loss and starts at 1).
        epoch: Phase epoch, 0-based.
        epochs: Epochs of the phase.
        warmup_epochs: Warm-up epochs (``cosine``).

    Returns:
        The factor on the phase's learning rates.

    Example:
        >>> factor("cosine", 0, 4, warmup_epochs=2)
        0.5
        >>> factor("cosine", 2, 4)
        0.5
    """
    if schedule in ("constant", "plateau"):
        return 1.0
    if schedule == "cosine":
        if epoch < warmup_epochs:
            return (epoch + 1) / warmup_epochs
        span = max(1, epochs - warmup_epochs)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))
    if schedule == "onecycle":
        if epochs <= 1:
            return 1.0
        t = epoch / (epochs - 1)
        low, final = 1.0 / DIV_FACTOR, 1.0 / (DIV_FACTOR * FINAL_DIV_FACTOR)
        if t <= PCT_START:
            return low + (1.0 - low) * (1.0 - math.cos(math.pi * t / PCT_START)) / 2.0
        t = (t - PCT_START) / (1.0 - PCT_START)
        return final + (1.0 - final) * (1.0 + math.cos(math.pi * t)) / 2.0
    raise ValueError(f"Unknown schedule: {schedule!r}.")


class PhaseSchedule(keras.callbacks.Callback):
    """Sets every sub-optimizer's learning rate to ``base * factor`` at each epoch start;
    :attr:`factor` is the factor of the current epoch (for ``history.csv``).

    Args:
        phase: The phase (its ``schedule``, ``epochs``, ``warmup_epochs``).
        position: Where the phase is in the run.
    """

    def __init__(self, phase: Phase, position: Position):
        super().__init__()
        self.phase = phase
        self.position = position
        self.factor = 1.0
        self._base: list[float] | None = None
        self._scale, self._best, self._wait = 1.0, math.inf, 0

    def on_train_begin(self, logs=None):
        self._opts = sub_optimizers(self.model.optimizer, self.model.trainable_variables)
        if self._base is None:  # a resumed phase keeps the bases of its first fit
            self._base = [float(keras.ops.convert_to_numpy(o.learning_rate)) for o in self._opts]

    def on_epoch_begin(self, epoch, logs=None):
        e = self.position.phase_epoch(epoch)
        f = factor(self.phase.schedule, e, self.phase.epochs, self.phase.warmup_epochs)
        self.factor = f * self._scale
        for opt, base in zip(self._opts, self._base):
            opt.learning_rate.assign(base * self.factor)

    def on_epoch_end(self, epoch, logs=None):
        if self.phase.schedule != "plateau":
            return
        logs = logs or {}
        current = logs.get("val_loss", logs.get("loss"))
        if current is None:
            return
        if current < self._best:
            self._best, self._wait = current, 0
            return
        self._wait += 1
        if self._wait >= PLATEAU_PATIENCE:
            self._scale *= PLATEAU_FACTOR
            self._wait = 0

    def state(self) -> dict:
        best = None if math.isinf(self._best) else float(self._best)
        return {"base": self._base, "scale": self._scale, "best": best, "wait": self._wait}

    def load_state(self, state: dict) -> None:
        self._base = state["base"]
        self._scale, self._wait = state["scale"], state["wait"]
        self._best = math.inf if state["best"] is None else state["best"]


class PhaseEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` on ``val_loss`` (``loss`` without validation data) that
    restores the phase's best weights when the phase ends."""

    def __init__(self, patience: int):
        super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)
        self._pending: dict | None = None

    def get_monitor_value(self, logs):
        logs = logs or {}
        return logs.get("val_loss", logs.get("loss"))

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._pending is not None:  # resumed: continue the phase's patience
            state, self._pending = self._pending, None
            self.wait, self.best = state["wait"], state["best"]
            self.best_epoch, self.stopped_epoch = state["best_epoch"], state["stopped_epoch"]
            self.best_weights = state["arrays"] or None

    def state(self) -> dict:
        """JSON values, and the best weights as ``arrays`` (saved by value)."""
        best = None if self.best is None else float(self.best)
        return {
            "wait": self.wait,
            "best": best,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "arrays": [np.asarray(w) for w in self.best_weights or []],
        }

    def load_state(self, state: dict) -> None:
        self._pending = state


def callbacks(phase: Phase, position: Position) -> dict:
    """The policies of a phase by name (``schedule``, ``early_stop``; empty for a plain one)."""
    found = {}
    if phase.schedule != "constant":
        found["schedule"] = PhaseSchedule(phase, position)
    if phase.early_stop:
        found["early_stop"] = PhaseEarlyStopping(phase.early_stop)
    return found


def current_factor(policies: dict) -> float:
    """The learning-rate factor the phase's schedule applied in the current epoch."""
    schedule = policies.get("schedule")
    return schedule.factor if schedule is not None else 1.0

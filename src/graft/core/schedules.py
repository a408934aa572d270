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
"""

from __future__ import annotations

import math

import keras

from graft.config.strategies import Phase
from graft.core.optim import sub_optimizers

PCT_START = 0.3
DIV_FACTOR = 25.0
FINAL_DIV_FACTOR = 1e4
PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2


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
    """Sets every sub-optimizer's learning rate to ``base * factor`` at each epoch
    start and records the factors (for ``history.csv``).

    Args:
        phase: The phase (its ``schedule``, ``epochs``, ``warmup_epochs``).
    """

    def __init__(self, phase: Phase):
        super().__init__()
        self.phase = phase
        self.factors: list[float] = []
        self._scale = 1.0

    def on_train_begin(self, logs=None):
        self._opts = sub_optimizers(self.model.optimizer, self.model.trainable_variables)
        self._base = [float(keras.ops.convert_to_numpy(o.learning_rate)) for o in self._opts]
        self._first = None
        self._best = math.inf
        self._wait = 0
        self.factors = []

    def on_epoch_begin(self, epoch, logs=None):
        if self._first is None:
            self._first = epoch
        e = epoch - self._first
        f = factor(self.phase.schedule, e, self.phase.epochs, self.phase.warmup_epochs)
        f *= self._scale
        for opt, base in zip(self._opts, self._base):
            opt.learning_rate.assign(base * f)
        self.factors.append(f)

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


class PhaseEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` on ``val_loss`` (``loss`` without validation data) that
    restores the phase's best weights when the phase ends."""

    def __init__(self, patience: int):
        super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)

    def get_monitor_value(self, logs):
        logs = logs or {}
        return logs.get("val_loss", logs.get("loss"))


def callbacks(phase: Phase) -> list:
    """The schedule and early-stopping callbacks of a phase (empty for a plain one)."""
    found = []
    if phase.schedule != "constant":
        found.append(PhaseSchedule(phase))
    if phase.early_stop:
        found.append(PhaseEarlyStopping(phase.early_stop))
    return found


def epoch_lrs(phase: Phase, found: list, epochs_run: int) -> list[tuple[float, float | None]]:
    """``(head lr, top backbone block lr)`` actually used in each epoch of a phase.

    Args:
        phase: The phase.
        found: Its callbacks (from :func:`callbacks`).
        epochs_run: Epochs the phase ran.

    Returns:
        One pair per epoch; the backbone rate is ``None`` when the backbone is frozen.
    """
    schedule = next((c for c in found if isinstance(c, PhaseSchedule)), None)
    factors = schedule.factors if schedule is not None else []
    if phase.backbone_frozen:
        backbone = None
    elif phase.layer_decay is not None:
        backbone = phase.lr * phase.layer_decay
    else:
        backbone = phase.backbone_lr or phase.lr
    pairs = []
    for i in range(epochs_run):
        f = factors[i] if i < len(factors) else 1.0
        pairs.append((phase.lr * f, None if backbone is None else backbone * f))
    return pairs

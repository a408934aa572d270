"""The learning-rate finder (Smith 2017; fastai's ``lr_find``).

:func:`sweep` trains a phase for ``steps`` batches while the learning rate grows
exponentially from ``start_lr`` to ``end_lr`` (every per-block rate keeps its ratio to
the head's), records the loss of every batch, stops early once the smoothed loss
exceeds ``4x`` its minimum, and restores the model's weights, so the model that
training uses afterwards is the one before the sweep. The suggestion is fastai's
"valley" rule: the longest stretch of decreasing (smoothed) loss, and the point a
third of the way plus a sixth into it -- inside the steepest descent, well before the
minimum, where the loss is still falling fastest.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from graft import progress
from graft.config.strategies import Phase
from graft.core.optim import sub_optimizers
from graft.runs.layout import LR_FIND_CSV, LR_FIND_PLOT
from graft.training.feed import Inputs, evenly

CSV_FILE, PLOT_FILE = LR_FIND_CSV, LR_FIND_PLOT


@dataclass
class LRFindResult:
    """One sweep: learning rates, raw and smoothed losses, and the suggestion."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    start_lr: float
    end_lr: float

    def rows(self) -> list[dict]:
        """One row per step (for the CSV)."""
        return [
            {"step": i + 1, "lr": lr, "loss": loss, "smoothed_loss": s}
            for i, (lr, loss, s) in enumerate(zip(self.lrs, self.losses, self.smoothed))
        ]

    def write(self, out: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``lr_find.csv`` and ``lr_find.png`` (loss vs LR, log scale) into ``out``.

        Returns:
            ``(csv_path, png_path)``.
        """
        from graft.runs import files as runs

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        csv_path, png_path = out / CSV_FILE, out / PLOT_FILE
        runs.write_csv(csv_path, self.rows())
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.lrs, self.losses, color="0.75", label="loss")
        ax.plot(self.lrs, self.smoothed, label="smoothed loss")
        ax.axvline(self.suggestion, color="C3", ls="--", label=f"valley {self.suggestion:.2e}")
        ax.set_xscale("log")
        low, high = y_limits(self.smoothed)
        ax.set_ylim(low, high)  # the divergence at the end would flatten everything else
        clipped = max((v for v in self.losses if math.isfinite(v)), default=high) > high
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss" + (f" (clipped at {high:.3g})" if clipped else ""))
        ax.legend()
        fig.tight_layout()
        tmp = png_path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, png_path)
        return csv_path, png_path


def y_limits(smoothed: list[float]) -> tuple[float, float]:
    """The loss axis of the plot: from just below the lowest smoothed loss to twice the
    drop above the starting loss (fastai's view), so that the divergence at the end of
    a sweep does not flatten the part that matters."""
    finite = [v for v in smoothed if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    start, low = finite[0], min(finite)
    high = min(max(finite), start + 2 * max(start - low, 0.05 * abs(start) or 0.1))
    margin = 0.05 * max(high - low, 1e-6)
    return low - margin, high + margin


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's "valley" suggestion: inside the longest run of decreasing loss.

    Args:
        lrs: Learning rates, increasing.
        losses: The (smoothed) loss at each.

    Returns:
        A learning rate from ``lrs``.
    """
    n = len(losses)
    if n == 0:
        raise ValueError("valley() needs at least one point.")
    longest = [1] * n  # longest decreasing subsequence ending at i
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end = i
            start = end - longest[end]
    section = (end - start) / 3
    index = min(n - 1, max(0, start + int(section) + int(section / 2)))
    return float(lrs[index])


class _Sweep(keras.callbacks.Callback):
    """Sets the learning rates for each one-batch 'epoch' and records its loss."""

    def __init__(self, rates: list[float], base: float, beta: float, stop_factor: float):
        super().__init__()
        self.rates, self.base, self.beta, self.stop_factor = rates, base, beta, stop_factor
        self.lrs, self.losses, self.smoothed = [], [], []
        self._avg, self._best = 0.0, math.inf

    def on_train_begin(self, logs=None):
        self._opts = sub_optimizers(self.model.optimizer, self.model.trainable_variables)
        self._ratios = [
            float(keras.ops.convert_to_numpy(o.learning_rate)) / self.base for o in self._opts
        ]

    def on_epoch_begin(self, epoch, logs=None):
        for opt, ratio in zip(self._opts, self._ratios):
            opt.learning_rate.assign(self.rates[epoch] * ratio)

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("loss", math.nan))
        self.lrs.append(self.rates[epoch])
        self.losses.append(loss)
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        smooth = self._avg / (1 - self.beta ** len(self.losses))
        self.smoothed.append(smooth)
        self._best = min(self._best, smooth)
        if not math.isfinite(smooth) or smooth > self.stop_factor * self._best:
            self.model.stop_training = True


def sweep(
    trainer,
    phase: Phase,
    train,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    beta: float = 0.98,
    stop_factor: float = 4.0,
) -> LRFindResult:
    """Sweep the learning rate of ``phase`` exponentially and suggest one.

    Args:
        trainer: A :class:`graft.training.Trainer` (its model, blocks, loss).
        phase: The phase whose rates are swept (its trainability is used; its
            ``lr`` only sets the ratio of per-block rates to the head's).
        train: Training batches (``(images, labels)``); repeated as needed.
        start_lr: First learning rate.
        end_lr: Last learning rate.
        steps: Number of batches (one learning rate each).
        beta: Smoothing of the recorded loss (exponential moving average).
        stop_factor: Stop once the smoothed loss exceeds this times its minimum.

    Returns:
        An :class:`LRFindResult`. The model's weights are as before the sweep.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"Need 0 < start_lr < end_lr, got {start_lr} and {end_lr}.")
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}.")
    model = trainer.model
    rates = list(np.geomspace(start_lr, end_lr, steps))
    saved = model.get_weights()
    try:
        trainer.prepare(dataclasses.replace(phase, schedule="constant", early_stop=0))
        sweep_cb = _Sweep(rates, phase.lr, beta, stop_factor)
        with (
            progress.track("LR finder", steps, "steps") as bar,
            evenly(Inputs(model, train)),  # batches that split over Keras's devices
        ):
            advance = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: bar.advance())
            model.fit(
                train.repeat(),
                steps_per_epoch=1,
                epochs=steps,
                verbose=0,
                callbacks=[sweep_cb, advance],
                shuffle=False,
            )
    finally:
        model.set_weights(saved)
    lrs, smoothed = sweep_cb.lrs, sweep_cb.smoothed
    finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]
    lo, hi = (len(finite) // 10, len(finite) - 5) if len(finite) > 20 else (0, len(finite))
    window = finite[lo:hi] or finite or [0]
    suggestion = valley([lrs[i] for i in window], [smoothed[i] for i in window])
    return LRFindResult(lrs, sweep_cb.losses, smoothed, suggestion, start_lr, end_lr)

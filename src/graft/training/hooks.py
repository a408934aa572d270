"""Hooks: what a phase does besides fitting, plugged into :class:`graft.training.Trainer`.

A hook sees every phase through a :class:`PhaseContext` (the phase, its
:class:`~graft.core.schedules.Position` in the run, the full model and the model being
fitted). Its ``state()`` is saved with every checkpoint and handed back to
``load_state()`` on resume, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from graft.config.strategies import Phase
from graft.core import optim, regularizers
from graft.core.schedules import Position
from graft.training import distribute
from graft.training.feed import one_epoch


@dataclass
class PhaseContext:
    """One phase being run: ``model`` is the full model, ``target`` the one fitted
    (the full model, or the head alone on cached features)."""

    phase: Phase
    position: Position
    plan_length: int
    model: keras.Model
    target: keras.Model
    train: object = None
    #: A non-shuffled, non-augmented pass over the training split (precise BN);
    #: ``None``: ``train``.
    train_eval: object = None
    #: The validation data ``target`` is fitted with, and the run's history rows so far
    #: (this phase's included once it has been fitted).
    val: object = None
    history: list | None = None
    #: ``target`` is the top of the model, trained on cached bottom activations.
    activations: bool = False

    @property
    def on_cache(self) -> bool:
        """Whether ``target`` is the head alone, on cached features."""
        return self.target is not self.model and not self.activations


class Hook:
    """Base class: every method is optional."""

    #: Key of the hook's state in the checkpoint (``None``: the hook has no state).
    name: str | None = None

    def before_fit(self, plan: list[Phase], model: keras.Model) -> None:
        """Once, before the first phase of a fit (also a resumed one)."""

    def before_phase(self, ctx: PhaseContext) -> None:
        """Before the phase's trainability is applied and its optimizer made."""

    def optimizer_kwargs(self, phase: Phase) -> dict:
        """Extra arguments for :func:`graft.core.optim.make_optimizer`."""
        return {}

    def phase_compiled(self, ctx: PhaseContext) -> None:
        """After ``ctx.target`` was compiled, before it is fitted."""

    def callbacks(self, ctx: PhaseContext) -> list:
        """Keras callbacks for the phase."""
        return []

    def epoch_end(self, ctx: PhaseContext, row: dict, states: dict) -> None:
        """After every finite epoch: its history row and every policy's and hook's state
        (as the hooks before this one left it)."""

    def after_phase(self, ctx: PhaseContext) -> None:
        """After the phase ended (also early); the model holds its final weights."""

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what :meth:`state` returned (called before :meth:`before_fit`)."""

    def resumed(self, history: list, model: keras.Model) -> None:
        """On resume, after every :meth:`load_state`: the history so far; ``model`` holds
        the checkpoint's weights."""


class BatchNormRecalibration(Hook):
    """AdaBN before every phase with ``recalibrate_bn`` (not again in a resumed phase), and
    precise BN after every phase that uses it (:attr:`Phase.uses_precise_bn`).

    Precise BN runs before the checkpointer marks the phase done, so the phase's final
    checkpoint (and every resume or export from it) holds the re-estimated statistics;
    a run stopped after the phase's last epoch but before that recalibrates on resume.
    """

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log

    def before_phase(self, ctx: PhaseContext) -> None:
        if ctx.phase.recalibrate_bn and ctx.position.done == 0:
            data = one_epoch(ctx.train, ctx.position.start)  # the phase's first epoch
            with distribute.local():  # a forward pass: no data split (and any batch)
                n = regularizers.recalibrate_bn(ctx.model, data)
            self.log(f"Recalibrated the statistics of {n} BatchNorm layers (AdaBN)")

    def after_phase(self, ctx: PhaseContext) -> None:
        if not ctx.phase.uses_precise_bn or ctx.on_cache:
            return
        data = ctx.train_eval
        if data is None:
            data = one_epoch(ctx.train, ctx.position.start)
        with distribute.local():  # a forward pass: no data split (and any batch)
            n = regularizers.recalibrate_bn(ctx.model, data, only_trainable=True)
        if not n:
            return
        text = f"Precise BN: re-estimated the statistics of {n} BatchNorm layers on the "
        text += "training images"
        rows = [r for r in ctx.history or () if r.get("phase_index") == ctx.position.index]
        if ctx.val is not None and rows and "val_loss" in rows[-1]:
            # The phase's last row was validated with the old statistics: measure again,
            # so metrics, history and checkpoint describe the model that is kept.
            # (the top of the model on cached activations: the same scores, compiled)
            with distribute.local():  # every validation row, whatever the devices
                scores = ctx.target.evaluate(ctx.val, verbose=0, return_dict=True)
            rows[-1].update({f"val_{k}": float(v) for k, v in scores.items()})
            if "accuracy" in scores:
                text += f"; val_accuracy now {scores['accuracy']:.4f}"
        self.log(text)


class L2SPAnchors(Hook):
    """The backbone's weights at the start of the run: where L2-SP pulls toward."""

    name = "l2sp"

    def __init__(self):
        self.anchors: dict[int, np.ndarray] | None = None
        self._saved: list | None = None
        self._model = None

    def before_fit(self, plan: list[Phase], model: keras.Model) -> None:
        self._model = model
        if self._saved is not None:
            weights = optim.backbone_anchors(model)
            self.anchors = dict(zip(weights, self._saved))
        elif self.anchors is None and any(p.l2sp for p in plan):
            self.anchors = optim.backbone_anchors(model)

    def optimizer_kwargs(self, phase: Phase) -> dict:
        return {"anchors": self.anchors} if phase.l2sp else {}

    def state(self) -> dict:
        return {"arrays": list(self.anchors.values())} if self.anchors else {}

    def load_state(self, state: dict) -> None:
        self._saved = state.get("arrays") or None


class KeepBest(Hook):
    """The weights of the run's best epoch by ``val_loss`` (lowest), across every phase.

    A candidate is every validated epoch as it ends and, after a phase, the phase's last
    row again: precise BN may have re-estimated the statistics and validated again, and
    then the end-of-phase weights (with their new statistics) replace that epoch's. The
    weights are part of the hook's state, so they survive a checkpoint and a resume.
    """

    name = "keep_best"
    monitor = "val_loss"

    def __init__(self):
        self.best: dict | None = None  # the kept row's epoch, phase and monitored value
        self.weights: list | None = None

    def _consider(self, row: dict | None, model: keras.Model) -> None:
        value = (row or {}).get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        same = self.best is not None and self.best["epoch"] == row["epoch"]
        if same or self.best is None or value < self.best["value"]:
            weights = [np.array(w) for w in model.get_weights()]
            if same and all(np.array_equal(a, b) for a, b in zip(self.weights, weights)):
                return  # the kept arrays already are these (no precise BN): not written again
            self.best = {
                "epoch": row["epoch"],
                "phase": row.get("phase"),
                "phase_index": row.get("phase_index"),
                "monitor": self.monitor,
                "value": float(value),
            }
            self.weights = weights

    def holds_current(self, model: keras.Model) -> bool:
        """Whether the kept weights are exactly ``model``'s current ones (none kept: the
        current ones are what is kept)."""
        if self.weights is None:
            return True
        current = model.get_weights()
        return len(current) == len(self.weights) and all(
            np.array_equal(a, b) for a, b in zip(current, self.weights)
        )

    def epoch_end(self, ctx: PhaseContext, row: dict, states: dict) -> None:
        self._consider(row, ctx.model)

    def after_phase(self, ctx: PhaseContext) -> None:
        rows = [r for r in ctx.history or () if r.get("phase_index") == ctx.position.index]
        if rows:
            self._consider(rows[-1], ctx.model)

    def resumed(self, history: list, model: keras.Model) -> None:
        # A run stopped after a phase ended: its last row may have been validated again
        # after precise BN; the model holds that phase's end weights.
        if history:
            self._consider(history[-1], model)

    def state(self) -> dict:
        if self.best is None:
            return {}
        return {"best": dict(self.best), "arrays": list(self.weights)}

    def load_state(self, state: dict) -> None:
        if state.get("best") and state.get("arrays") is not None:
            self.best, self.weights = dict(state["best"]), list(state["arrays"])

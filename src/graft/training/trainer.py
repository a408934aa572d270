"""The trainer: runs a plan of phases on a grafted model. It knows no strategy names.

For each phase it applies the phase's trainability (:func:`graft.freezing.apply`),
compiles a fresh optimizer (a change of trainability always gets a recompile), fits,
and records one history row per epoch with the phase it belongs to. When the backbone
trains at another learning rate than the head, the optimizer is a
``keras.optimizers.MultiOptimizer`` with one optimizer per group.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras

from graft.config.strategies import Phase
from graft.core import freezing, optim, regularizers, schedules
from graft.core.blocks import Block
from graft.core.model import backbone_of
from graft.errors import TrainingFailed
from graft.training import cache

CACHED_STEPS_PER_EXECUTION = 64

_OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
    "nadam": keras.optimizers.Nadam,
}


def make_optimizer(phase: Phase, model: keras.Model) -> keras.optimizers.Optimizer:
    """The optimizer for one phase: one learning rate, or one for head and one for backbone."""
    head_opt = _OPTIMIZERS[phase.optimizer](learning_rate=phase.lr)
    if phase.backbone_frozen or phase.backbone_lr in (None, phase.lr):
        return head_opt
    backbone_opt = _OPTIMIZERS[phase.optimizer](learning_rate=phase.backbone_lr)
    backbone_ids = {id(v) for v in backbone_of(model).weights}
    return keras.optimizers.MultiOptimizer(
        lambda variable: backbone_opt if id(variable) in backbone_ids else head_opt
    )


class _EpochTimer(keras.callbacks.Callback):
    """Wall time of every epoch (validation included), for history.csv."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


@dataclass
class PhaseResult:
    """What one phase did."""

    phase: Phase
    report: freezing.TrainabilityReport
    epochs_run: int
    seconds: float

    def as_dict(self) -> dict:
        return {
            "name": self.phase.name,
            **self.report.as_dict(),
            "lr": self.phase.lr,
            "backbone_lr": self.phase.backbone_lr,
            "epochs": self.epochs_run,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class TrainResult:
    """History rows (one per epoch) and per-phase results."""

    history: list[dict] = field(default_factory=list)
    phases: list[PhaseResult] = field(default_factory=list)


class Trainer:
    """Runs plans of phases on one model.

    Args:
        model: A grafted model (:func:`graft.model.build_model`).
        blocks: The backbone's blocks.
        loss: Keras loss for the task.
        metrics: Keras metrics.
        log: Called with one line of text per phase (``print`` by default).
        verbose: Keras ``fit`` verbosity (``"auto"``: a progress bar on a terminal).
        callbacks: Extra Keras callbacks for every phase.
        jit_compile: XLA compilation of the train step (``True``/``False``/``"auto"``:
            Keras's choice, which is off on CPU-only TensorFlow).
        class_weight: ``{class_index: weight}`` for ``fit`` (e.g. balanced weights).
        checkpoint: A :class:`graft.checkpoints.Checkpointer` that saves every epoch.
    """

    def __init__(
        self,
        model: keras.Model,
        blocks: list[Block],
        loss: str = "sparse_categorical_crossentropy",
        metrics=("accuracy",),
        log: Callable[[str], None] = print,
        verbose="auto",
        callbacks=(),
        jit_compile: bool | str = "auto",
        class_weight: dict[int, float] | None = None,
        checkpoint=None,
    ):
        self.model = model
        self.blocks = blocks
        self.loss = loss
        self.metrics = list(metrics)
        self.log = log
        self.verbose = verbose
        self.callbacks = list(callbacks)
        self.jit_compile = jit_compile
        self.class_weight = class_weight
        self.anchors = None  # L2-SP: backbone weights at the start of fit
        self._callbacks_of_phase: list = []
        self.checkpoint = checkpoint

    def __repr__(self) -> str:
        return f"Trainer(model={self.model.name!r}, blocks={len(self.blocks)}, loss={self.loss!r})"

    def prepare(
        self, phase: Phase, target: keras.Model | None = None
    ) -> freezing.TrainabilityReport:
        """Apply a phase's trainability and compile ``target`` (default: the model) for it."""
        report = freezing.apply(self.model, self.blocks, phase.trainable, phase.train_bn)
        on_features = target is not None and target is not self.model
        if optim.needs_custom(phase):
            optimizer = optim.build(phase, self.model, self.blocks, self.anchors)
        else:
            optimizer = make_optimizer(phase, self.model)
        (target or self.model).compile(
            optimizer=optimizer,
            loss=self.loss,
            metrics=self.metrics,
            jit_compile=self.jit_compile,
            # A head step on cached features is tiny: run many per call to cut overhead.
            steps_per_execution=CACHED_STEPS_PER_EXECUTION if on_features else 1,
        )
        return report

    def phase_callbacks(self, phase: Phase, index: int, target: keras.Model) -> list:
        """Keras callbacks for one phase; ``target`` is the model being fitted (the full
        model, or the head alone on cached features). Per-phase policies hook in here."""
        self._callbacks_of_phase = schedules.callbacks(phase)
        callbacks = [keras.callbacks.TerminateOnNaN(), *self._callbacks_of_phase]
        if self.checkpoint is not None:
            callbacks += self.checkpoint.callbacks(self, phase, index, target)
        return callbacks

    def fit(self, plan: list[Phase], train, val=None, cached=None, resume=None) -> TrainResult:
        """Run every phase of ``plan`` in order on ``train`` (validating on ``val``).

        Args:
            plan: The phases.
            train: Dataset of (raw image batch, label batch).
            val: Optional validation dataset of the same kind.
            cached: Optional ``(train_features_ds, val_features_ds_or_None,
                steps_per_epoch_or_None)`` from :func:`graft.cache.cached_datasets`.
                Phases that leave the backbone frozen then train the head on these
                features instead of running the backbone on every image in every epoch.
            resume: ``(checkpoints.State, run_dir)`` of a checkpoint whose weights are
                already in the model: skip the phases and epochs it has done, restore
                the optimizer state, and start from its history rows.
        """
        result = TrainResult()
        epoch = 0
        start_phase, done = 1, 0
        if resume is not None:
            state, run_dir = resume
            start_phase, done = state.next_position()
            epoch = state.epoch
            result.history = list(state.history)
            for index, phase in enumerate(plan[: start_phase - 1], start=1):
                rows = [r for r in state.history if r["phase_index"] == index]
                report = freezing.apply(self.model, self.blocks, phase.trainable, phase.train_bn)
                seconds = sum(r.get("seconds", 0.0) for r in rows)
                result.phases.append(PhaseResult(phase, report, len(rows), seconds))
        head = cache.head_model(self.model) if cached is not None else None
        if any(p.l2sp for p in plan) and self.anchors is None:
            self.anchors = optim.backbone_anchors(self.model)
        for index, phase in enumerate(plan, start=1):
            if index < start_phase:
                continue
            skip = done if index == start_phase else 0
            on_cache = head is not None and phase.backbone_frozen
            if phase.recalibrate_bn:
                n = regularizers.recalibrate_bn(self.model, train)
                self.log(f"Recalibrated the statistics of {n} BatchNorm layers (AdaBN)")
            target = head if on_cache else self.model
            report = self.prepare(phase, target)
            if skip:
                from graft.training.checkpoints import restore_optimizer

                restore_optimizer(target, run_dir, state)
            lr_text = f"lr {phase.lr:g}"
            if not phase.backbone_frozen and phase.backbone_lr not in (None, phase.lr):
                lr_text += f", backbone lr {phase.backbone_lr:g}"
            self.log(
                f"Phase {index}/{len(plan)} '{phase.name}': backbone {report.spec}"
                f"{' (BN trains)' if phase.train_bn else ''}; "
                f"trainable {report.trainable_params:,} / frozen {report.frozen_params:,} params; "
                f"{lr_text}; {phase.epochs} epochs{' on cached features' if on_cache else ''}"
            )
            start = time.perf_counter()
            timer = _EpochTimer()
            history = target.fit(
                cached[0] if on_cache else train,
                validation_data=cached[1] if on_cache else val,
                steps_per_epoch=cached[2] if on_cache else None,
                initial_epoch=epoch,
                epochs=epoch + phase.epochs - skip,
                verbose=self.verbose,
                callbacks=[*self.callbacks, *self.phase_callbacks(phase, index, target), timer],
                class_weight=self.class_weight,
                shuffle=False,  # the pipeline shuffles
            )
            seconds = time.perf_counter() - start
            epochs_run = len(history.epoch)
            lrs = schedules.epoch_lrs(phase, self._callbacks_of_phase, epochs_run)
            for i in range(epochs_run):
                row = {
                    "phase": phase.name,
                    "phase_index": index,
                    "epoch": epoch + i + 1,
                    "phase_epoch": skip + i + 1,
                }
                row.update({k: float(v[i]) for k, v in history.history.items()})
                row["seconds"] = round(timer.seconds[i], 4)
                row["lr"], row["backbone_lr"] = lrs[i]
                result.history.append(row)
                if not math.isfinite(row.get("loss", 0.0)):
                    raise TrainingFailed(
                        f"The loss became {row['loss']} in phase {index} '{phase.name}' at its "
                        f"epoch {skip + i + 1} (epoch {epoch + i + 1} of the run); training stopped"
                        f"{'; the last good checkpoint is kept' if self.checkpoint else ''}.",
                        hint="lower the learning rate (--lr / --finetune-lr) or check the data.",
                    )
            epoch += epochs_run
            result.phases.append(PhaseResult(phase, report, skip + epochs_run, seconds))
        return result

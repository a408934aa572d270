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

from graft import progress
from graft.config.strategies import Phase
from graft.core import freezing, keras_compat, schedules
from graft.core.blocks import Block
from graft.core.optim import make_optimizer
from graft.core.schedules import Position
from graft.errors import TrainingFailed
from graft.training.feed import ACTIVATIONS, Feed, Inputs, epoch_stream, evenly, order_callbacks
from graft.training.hooks import BatchNormRecalibration, Hook, L2SPAnchors, PhaseContext

CACHED_STEPS_PER_EXECUTION = 64


def steps_per_execution(steps: int | None) -> int:
    """Head steps per call on cached features: the largest divisor of the epoch's steps up
    to :data:`CACHED_STEPS_PER_EXECUTION` (Keras counts a call as that many steps, so a
    call past the epoch's end shows ``64/34`` in the progress bar). PyTorch's trainer
    takes one step per call only."""
    if not steps or steps < 1 or keras.backend.backend() == "torch":
        return 1
    return max(d for d in range(1, min(steps, CACHED_STEPS_PER_EXECUTION) + 1) if steps % d == 0)


def build_state(model: keras.Model, dataset) -> None:
    """Create the optimizer's and the metrics' variables of a compiled ``model`` before
    ``fit`` traces its training step. Without a distribution strategy Keras (TensorFlow)
    creates them while tracing, and a ``tf.function`` that creates variables is traced
    twice: 0.5-1 s more in the first epoch of every phase. Keras's own (private) symbolic
    build does it from the dataset's element spec; where that is not available, Keras's
    lazy build still happens in ``fit``."""
    spec = getattr(dataset, "element_spec", None)
    if keras.backend.backend() != "tensorflow" or spec is None:
        return
    if keras_compat.strategy_of(model) is not None:
        return  # Keras builds it itself under a strategy
    try:
        keras_compat.symbolic_build(model, spec)
    except Exception:  # an optimisation only: fit builds what is missing
        pass


def history_row(
    ctx: PhaseContext, run_epoch: int, logs: dict, seconds: float, lr_factor: float = 1.0
) -> dict:
    """The one ``history.csv`` row of run epoch ``run_epoch`` (0-based), with the
    learning rates actually used (the phase's rates times the schedule's factor)."""
    phase = ctx.phase
    row = {
        "phase": phase.name,
        "phase_index": ctx.position.index,
        "epoch": run_epoch + 1,
        "phase_epoch": ctx.position.phase_epoch(run_epoch) + 1,
    }
    row.update({k: float(v) for k, v in (logs or {}).items()})
    row["seconds"] = round(seconds, 4)
    backbone = phase.effective_backbone_lr
    row["lr"] = phase.lr * lr_factor
    row["backbone_lr"] = None if backbone is None else backbone * lr_factor
    return row


class _Recorder(keras.callbacks.Callback):
    """Writes the history row of every epoch and hands it, with every state, to the hooks."""

    def __init__(self, ctx: PhaseContext, policies: dict, hooks: list[Hook], rows: list):
        super().__init__()
        self.ctx, self.policies, self.hooks, self.rows = ctx, policies, hooks, rows

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        factor = schedules.current_factor(self.policies)
        row = history_row(self.ctx, epoch, logs, time.perf_counter() - self._start, factor)
        self.rows.append(row)
        if not math.isfinite(row.get("loss", 0.0)):
            return
        for hook in self.hooks:  # each sees the states the hooks before it left
            states = {name: policy.state() for name, policy in self.policies.items()}
            states.update({h.name: h.state() for h in self.hooks if h.name})
            hook.epoch_end(self.ctx, row, states)


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
            "backbone_lr": self.phase.effective_backbone_lr,
            "epochs": self.epochs_run,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class TrainResult:
    """History rows (one per epoch) and per-phase results."""

    history: list[dict] = field(default_factory=list)
    phases: list[PhaseResult] = field(default_factory=list)


class Trainer:
    """Runs plans of phases on one model through hooks.

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
        hooks: Extra :class:`~graft.training.hooks.Hook` objects (e.g. a
            :class:`graft.training.checkpoints.Checkpointer`), after AdaBN and L2-SP anchors.
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
        hooks: list[Hook] = (),
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
        self.hooks: list[Hook] = [BatchNormRecalibration(log), L2SPAnchors(), *hooks]

    def __repr__(self) -> str:
        return f"Trainer(model={self.model.name!r}, blocks={len(self.blocks)}, loss={self.loss!r})"

    def prepare(
        self,
        phase: Phase,
        target: keras.Model | None = None,
        head_only: bool = False,
        steps: int | None = None,
    ) -> freezing.TrainabilityReport:
        """Apply a phase's trainability and compile ``target`` (default: the model) for it;
        ``head_only``: ``target`` is the head on cached features, ``steps`` per epoch."""
        report = freezing.apply(self.model, self.blocks, phase.trainable, phase.train_bn)
        extra = {k: v for h in self.hooks for k, v in h.optimizer_kwargs(phase).items()}
        optimizer = make_optimizer(phase, self.model, self.blocks, **extra)
        (target or self.model).compile(
            optimizer=optimizer,
            loss=self.loss,
            metrics=self.metrics,
            jit_compile=self.jit_compile,
            # A head step on cached features is tiny: run many per call to cut overhead
            # (a step with convolutions gains nothing and its loop traces ~1.5 s longer).
            steps_per_execution=steps_per_execution(steps) if head_only else 1,
        )
        return report

    def fit(
        self,
        plan: list[Phase],
        train,
        val=None,
        cached: Inputs | None = None,
        resume=None,
        train_eval=None,
        activations=None,
    ) -> TrainResult:
        """Run every phase of ``plan`` in order on ``train`` (validating on ``val``).

        Args:
            plan: The phases.
            train: Dataset of (raw image batch, label batch), or a
                :class:`graft.training.feed.Feed` that holds every phase's inputs (then
                ``val``, ``cached`` and ``activations`` are not given).
            val: Optional validation dataset of the same kind.
            cached: Optional :class:`graft.training.feed.Inputs` of the head on cached
                features, from :func:`graft.training.cache.cached_datasets`. Phases
                that leave the backbone frozen then train the head on these features
                instead of running the backbone on every image in every epoch.
            resume: A committed :class:`graft.training.checkpoints.State` whose weights are already
                in the model: skip the phases and epochs it has done, hand every hook and
                policy its saved state, and start from its history rows.
            train_eval: The training split, not shuffled and not augmented, for precise
                BN after a phase (``None``: ``train``).
            activations: Optional :class:`graft.training.activations.ActivationCache`:
                the phases it serves train its top model (sharing the model's layers) on
                cached activations of the frozen bottom of the backbone.
        """
        if isinstance(train, Feed):
            feed = train
        else:
            feed = Feed(self.model, train, val, cached, activations)
        result = TrainResult()
        epoch, start_phase, done, states = 0, 1, 0, {}
        if resume is not None:
            start_phase, done = resume.next_position()
            epoch, states = resume.epoch, dict(resume.states)
            result.history = list(resume.history)
            for index, phase in enumerate(plan[: start_phase - 1], start=1):
                rows = [r for r in resume.history if r["phase_index"] == index]
                report = freezing.apply(self.model, self.blocks, phase.trainable, phase.train_bn)
                seconds = sum(r.get("seconds", 0.0) for r in rows)
                result.phases.append(PhaseResult(phase, report, len(rows), seconds))
            for hook in self.hooks:
                if hook.name in states:
                    hook.load_state(states[hook.name])
            for hook in self.hooks:
                hook.resumed(result.history, self.model)
        for hook in self.hooks:
            hook.before_fit(plan, self.model)
        for index, phase in enumerate(plan, start=1):
            if index < start_phase:
                continue
            skip = done if index == start_phase else 0
            inputs = feed.inputs(index, phase)
            position = Position(index, epoch - skip, skip)
            ctx = PhaseContext(
                phase,
                position,
                len(plan),
                self.model,
                inputs.target,
                feed.full.train,
                train_eval,
                inputs.val,
                result.history,
                activations=inputs.kind == ACTIVATIONS,
            )
            result.phases.append(self._run_phase(ctx, inputs, result, states if skip else {}))
            epoch = position.start + result.phases[-1].epochs_run
        return result

    def _run_phase(self, ctx: PhaseContext, inputs: Inputs, result, states) -> PhaseResult:
        phase, position, on_cache = ctx.phase, ctx.position, ctx.on_cache
        for hook in self.hooks:
            hook.before_phase(ctx)
        steps = inputs.steps or _cardinality(inputs.train)
        report = self.prepare(phase, ctx.target, head_only=ctx.on_cache, steps=steps)
        policies = schedules.callbacks(phase, position)
        for name, policy in policies.items():
            if name in states:
                policy.load_state(states[name])
        for hook in self.hooks:
            hook.phase_compiled(ctx)
        lr_text = f"lr {phase.lr:g}"
        if phase.effective_backbone_lr not in (None, phase.lr):
            lr_text += f", backbone lr {phase.effective_backbone_lr:g}"
        self.log(
            f"Phase {position.index}/{ctx.plan_length} '{phase.name}': backbone {report.spec}"
            f"{' (BN trains)' if phase.train_bn else ''}; "
            f"trainable {report.trainable_params:,} / frozen {report.frozen_params:,} params; "
            f"{lr_text}; {phase.epochs} epochs"
            + (" on cached features" if on_cache else "")
            + (" on cached activations" if ctx.activations else "")
        )
        rows: list[dict] = []
        callbacks = [keras.callbacks.TerminateOnNaN(), *policies.values()]
        callbacks.append(_Recorder(ctx, policies, self.hooks, rows))
        callbacks += [c for hook in self.hooks for c in hook.callbacks(ctx)]
        callbacks += order_callbacks(inputs.train)  # graft's epoch order (not tf.data)
        # On TensorFlow: the stream of run epochs first, first + 1, ... in graft's order.
        train, steps_per_epoch = epoch_stream(inputs.train, inputs.steps, position.first_run_epoch)
        start = time.perf_counter()
        build_state(ctx.target, inputs.train)
        # JAX's DataParallel (Keras's distribution, global inside the run's scope) splits
        # every batch evenly over its devices: the readers leave out the rows that would
        # not split while fit reads them (graft's own predictions run outside it).
        with evenly(inputs):
            ctx.target.fit(
                train,
                validation_data=inputs.val,
                steps_per_epoch=steps_per_epoch,
                initial_epoch=position.first_run_epoch,
                epochs=position.start + phase.epochs,
                verbose=progress.keras_verbosity(self.verbose),
                callbacks=[*self.callbacks, *callbacks],
                class_weight=self.class_weight,
                shuffle=False,  # the pipeline shuffles
            )
        seconds = time.perf_counter() - start
        result.history.extend(rows)
        for row in rows:
            if not math.isfinite(row.get("loss", 0.0)):
                raise TrainingFailed(
                    f"The loss became {row['loss']} in phase {position.index} '{phase.name}' at "
                    f"its epoch {row['phase_epoch']} (epoch {row['epoch']} of the run); training "
                    "stopped; the last good checkpoint (if any) is kept.",
                    hint="lower the learning rate (lr, finetune_lr) or check the data.",
                )
        for hook in self.hooks:
            hook.after_phase(ctx)
        return PhaseResult(phase, report, position.done + len(rows), seconds)


def _cardinality(dataset) -> int | None:
    """Batches in one pass over ``dataset``, if it knows (``None``: unknown or infinite)."""
    try:
        count = int(dataset.cardinality())
    except (AttributeError, TypeError, ValueError):
        return None
    return count if count > 0 else None

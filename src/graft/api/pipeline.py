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
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras

from graft import progress
from graft.api import building
from graft.api.result import Run
from graft.config.paths import AS_TYPED, make_portable
from graft.config.phase import Plan
from graft.config.settings import TrainConfig
from graft.core import backbones, freezing, model_utils, scaling
from graft.core.model import BACKBONE_NAME, HeadConfig, backbone_of, pooling_summary
from graft.core.model import build_model as assemble
from graft.data import adapter, pipelines
from graft.data.pipelines import load_image
from graft.errors import DataError, GraftError
from graft.reporting import drift, evaluation, plots, report
from graft.reporting.plot_worker import PlotWorker
from graft.runs import files, fingerprints, layout, lock
from graft.runs import metrics as run_metrics
from graft.runs import status as run_status
from graft.runs.model_io import is_multi_label
from graft.training import activations, cache, checkpoints, derived, distribute, resume
from graft.training.hooks import KeepBest
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

    classes = property(lambda self: self.train.classes)
    multi_label = property(lambda self: self.train.multi_label)


@dataclass(frozen=True)
class Built:
    bb: backbones.Backbone
    model: keras.Model
    loss: str
    metrics: list
    source_task: drift.SourceTask | None


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
            # Seeded before anything is built: the same seed, the same head weights and
            # batches (a resume then restores the RNG of its last checkpoint).
            keras.utils.set_random_seed(ctx.cfg.seed)
            scope.enter_context(ctx.devices.scope())
            if ctx.devices.describe(ctx.cfg.batch_size):
                ctx.log(ctx.devices.describe(ctx.cfg.batch_size))
            built = build_model(ctx, data)
            pipes = make_pipelines(ctx, data, built.bb)
            setup = make_trainer(ctx, data, built)
            fitted = fit(ctx, data, built, pipes, setup)
            # From here on the run's settings are the ones it trained with (lr="auto"
            # replaced by the found rate): config.yaml records them.
            ctx = dataclasses.replace(ctx, cfg=fitted.cfg)
            worker = _draw_curves(fitted, run_dir)  # on the other core, from now on
            model = finalize(ctx, built, fitted, scope)
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
            return write(ctx, run, data, dataclasses.replace(inputs, test=tested))
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
    if val is None and cfg.val_split and train.labels is not None:
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
    )


def open_run(ctx: Context, data: PreparedData, held: contextlib.ExitStack) -> Context:
    """Lock the run folder (held until ``held`` closes), prepare it, save ``config.yaml``
    and mark the run as running; the context with the run folder (``None`` in memory)."""
    req = ctx.req
    if req.out is None:
        if req.tensorboard:
            raise GraftError("tensorboard=True needs a run folder (out=DIR) to write logs to.")
        return ctx
    path = Path(req.out).expanduser()
    if path.exists() and not path.is_dir():
        raise GraftError(f"out={req.out} exists and is not a folder.")
    path.mkdir(parents=True, exist_ok=True)
    held.enter_context(lock.RunLock(path))
    run_dir = files.prepare(path, req.overwrite, req.resume)
    backbone = ctx.backbone.kept_in(run_dir)
    if not req.resume:  # a resumed run keeps the config.yaml (and backbone) of its start
        config = {**ctx.cfg.as_dict(), "data": data.sources, "safe_mode": req.safe_mode}
        if backbone.saved is not None:  # resume reloads it from the run folder
            backbone.model.save(backbone.saved)
            config["backbone"] = backbone.saved
        files.write_yaml(run_dir / layout.CONFIG_FILE, make_portable(config, data.typed, run_dir))
    checkpoints.write_status(run_dir, "running")
    return dataclasses.replace(ctx, run_dir=run_dir, backbone=backbone)


# ---------------------------------------------------------------------------------------
# 4-5: model, pipelines, trainer
# ---------------------------------------------------------------------------------------


def _weights_text(source, weights) -> str:
    """``imagenet weights``, or ``its own weights`` for a model file (not its path twice)."""
    return "its own weights" if str(weights) == str(source) else f"{weights} weights"


def build_model(ctx: Context, data: PreparedData) -> Built:
    """Resolve the backbone, prepare the source task, assemble the model and its loss."""
    cfg, log = ctx.cfg, ctx.log
    bb = building.resolve_backbone(cfg, ctx.req.safe_mode, ctx.backbone.model)
    if ctx.backbone.is_file:
        bb = match_scaling(cfg, bb, data.train, log)
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
    with building.precision(cfg.precision):
        head = HeadConfig(ctx.plan.head, cfg.dropout, data.multi_label, cfg.pool)
        model = assemble(bb, len(data.classes), head)
    log(f"Head input: {pooling_summary(model.get_layer(BACKBONE_NAME).output.shape, cfg.pool)}")
    freezing.check_plan(model, bb.blocks, ctx.plan.phases)  # every phase's spec, before epoch 1
    loss, metrics = building.task(data.multi_label)
    return Built(bb, model, loss, metrics, source_task)


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
    lr_found = None
    if ctx.cfg.lr == "auto":
        ctx, lr_found = _auto_lr(ctx, setup.trainer, pipes.train)
    # Activations first: the head phase's features are then derived from them (one
    # bottom pass per image, graft.training.derived).
    acts = _activation_cache(ctx, data, built, pipes)
    cached = _feature_cache(ctx, data, built, pipes, acts)
    state = setup.state
    if state is not None:
        # The pipelines replay the passes the interrupted run made, so the next batch is
        # the one it would have drawn; a strategy that peeks one batch ahead had started
        # the interrupted epoch's pass already.
        mid_phase = ctx.devices.peeks and state.next_position()[1] > 0
        checkpoints.fast_forward(pipes.train, state.passes.get("full", 0) - mid_phase)
        if cached is not None:
            checkpoints.fast_forward(cached.train, state.passes.get("cached", 0) - mid_phase)
        if acts is not None:
            checkpoints.fast_forward(acts.train, state.passes.get("activations", 0) - mid_phase)
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
    plan = Plan(tuple(cfg.resolved_plan()), ctx.plan.head)
    ctx = dataclasses.replace(ctx, cfg=cfg, plan=plan)
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


def _draw_curves(fitted: Fitted, run_dir) -> PlotWorker | None:
    """Start drawing the training curves in a second process (see :func:`write`)."""
    if run_dir is None or not fitted.result.history:
        return None
    worker = PlotWorker()
    path = Path(run_dir) / plots.PLOTS_DIR / plots.CURVES
    worker.submit("training_curves", fitted.result.history, path)
    return worker


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
    building.compile_for_shipping(model, fitted.phases[-1], built.loss, built.metrics)
    _keep(model, fitted, ctx.run_dir, ctx.log)
    return model


def kept_row(fitted: Fitted) -> dict:
    """The history row of the epoch ``model.keras`` holds (the last one unless best kept)."""
    history = fitted.result.history
    best = fitted.keeper.best if fitted.keeper is not None else None
    if best is not None:
        return next((r for r in history if r["epoch"] == best["epoch"]), history[-1])
    return history[-1] if history else {}


def _keep(model: keras.Model, fitted: Fitted, run_dir, log) -> None:
    """``keep="best"``: save the last epoch as ``last.keras``, then hold the best epoch.
    Where the kept weights are the last ones, ``last.keras`` is a copy of ``model.keras``
    made by :func:`write` (one model serialized, not two)."""
    keeper, history = fitted.keeper, fitted.result.history
    if keeper is None or not history:
        return
    if run_dir is not None:
        last_file = Path(run_dir) / layout.LAST_MODEL_FILE
        if keeper.holds_current(model):
            last_file.unlink(missing_ok=True)  # write() copies model.keras here
        else:
            files.save_model(model, last_file)
    last = history[-1]["epoch"]
    if keeper.best is None:
        log(f"Kept the last epoch ({last}): no {keeper.monitor} to choose the best by.")
        return
    model.set_weights(keeper.weights)
    best = keeper.best
    if best["epoch"] == last:
        log(f"Kept the last epoch ({last}): lowest {best['monitor']} {best['value']:.4f}")
        return
    log(
        f"Kept epoch {best['epoch']} of {last} (phase {best['phase_index']} '{best['phase']}'): "
        f"lowest {best['monitor']} {best['value']:.4f}"
        + (f"; the last epoch is in {layout.LAST_MODEL_FILE}" if run_dir is not None else "")
    )


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
    validation = None
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


def write(ctx: Context, run: Run, data: PreparedData, inputs: report.ReportInputs) -> Run:
    """Save the run folder's artifacts, evaluate, draw, report; mark it completed.
    Returns ``run`` with the evaluation in its metrics."""
    d = run.run_dir
    files.save_model(run.model, d / layout.MODEL_FILE)
    if ctx.cfg.keep == "best" and not (d / layout.LAST_MODEL_FILE).exists():
        files.copy_file(d / layout.MODEL_FILE, d / layout.LAST_MODEL_FILE)  # see _keep
    files.write_json(d / layout.LABELS_FILE, run.classes)
    config = run.config.as_dict()
    config["resolved_backbone"] = run.backbone.describe()
    config["classes"] = run.classes
    config["multi_label"] = is_multi_label(run.model)
    config["versions"] = building.versions()
    config.update(data=data.sources, safe_mode=ctx.req.safe_mode)
    if ctx.backbone.saved:
        config["backbone"] = ctx.backbone.saved
    with contextlib.suppress(Exception):  # a resumed run keeps the spellings of its start
        config[AS_TYPED] = files.read_yaml(d / layout.CONFIG_FILE, {}).get(AS_TYPED)
    files.write_yaml(d / layout.CONFIG_FILE, make_portable(config, data.typed, d))
    files.write_csv(d / layout.HISTORY_FILE, run.history)
    run_metrics.record(d, run.metrics, fresh=True)
    # Training is over and its files are saved: the report written next shows this status
    # (a failure while evaluating still marks the run failed, in execute).
    checkpoints.write_status(d, "completed")
    with progress.status("Evaluating and writing the report"):
        evaluated = report.finish_run(d, inputs)
    if evaluated is None:
        return run
    return dataclasses.replace(run, metrics={**run.metrics, "evaluation": evaluated})

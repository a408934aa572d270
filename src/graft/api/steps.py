"""``graft.train`` as named steps, each short and returning a named result.

:func:`execute` runs them in order: choose devices, resolve the plan, prepare the data,
open the run folder, build the model, make the pipelines, make the trainer, fit,
finalize, measure, write. :mod:`graft.api.auto` and :mod:`graft.api.compare` call
:func:`execute` with a :class:`Request`; the facade :func:`graft.train` only turns its
arguments (and ``resume``) into one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras

from graft.api import building
from graft.config import strategies
from graft.config.paths import make_portable
from graft.config.settings import TrainConfig
from graft.core import backbones, freezing, scaling
from graft.core.model import BACKBONE_NAME, HeadConfig, pooling_summary
from graft.core.model import build_model as assemble
from graft.data import adapter, pipelines
from graft.errors import DataError, GraftError
from graft.reporting import drift
from graft.runs import files, fingerprints, layout, lock
from graft.training import checkpoints, distribute, resume
from graft.training.hooks import KeepBest
from graft.training.trainer import Trainer, TrainResult


@dataclass
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

    def typed(self) -> dict:
        """The data sources as the caller spelled them (``config.yaml``'s ``as_typed``)."""
        return {"train": self.data, "val": self.val, "test": self.test}

    def sources(self) -> dict:
        """Where the data came from, as saved in ``config.yaml`` (paths only)."""
        return {
            "train": _path(self.data),
            "val": _path(self.val),
            "test": _path(self.test),
            "classes": self.classes,
        }


def backbone_setting(backbone) -> str:
    """The ``backbone`` setting of a request: its name or path, or a label for an object."""
    if isinstance(backbone, keras.Model):
        return f"keras.Model:{backbone.name}"
    return str(backbone)


def saved_backbone(req: Request, run_dir: Path) -> str | None:
    """Where the run folder keeps a ``keras.Model`` backbone (the ``backbone`` setting)."""
    if not isinstance(req.backbone, keras.Model):
        return None
    return str((Path(run_dir) / layout.BACKBONE_FILE).resolve())


def _path(source) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source).expanduser().resolve())
    return None


#: Where a run trains: one device, or a tf.distribute strategy behind one adapter.
Devices = distribute.Distribution


@dataclass
class Plan:
    phases: list
    head: object


@dataclass
class PreparedData:
    train: adapter.DataAdapter
    val: adapter.DataAdapter | None
    test: adapter.DataAdapter | None
    classes: list[str]
    multi_label: bool
    counts: dict
    check: object
    augment: object
    class_weight: dict | None


@dataclass
class Built:
    bb: backbones.Backbone
    model: keras.Model
    loss: str
    metrics: list
    source_task: drift.SourceTask | None


@dataclass
class Pipelines:
    train: object
    val: object
    batch_size: int
    #: The training split in order, not augmented (precise BN), or ``None`` (tf.data).
    train_eval: object = None


@dataclass
class TrainerSetup:
    trainer: Trainer
    checkpointer: checkpoints.Checkpointer | None
    state: checkpoints.State | None
    reference: list | None = None
    keeper: KeepBest | None = None


@dataclass
class Fitted:
    result: TrainResult
    phases: list
    seconds: float
    lr_found: dict | None
    reference: list | None
    keeper: KeepBest | None = None
    #: The feature cache's :class:`graft.training.feed.Inputs`, if the run used it.
    cached: object = None
    #: What the activation cache did (metrics.json's ``activation_cache``), if used.
    activation_cache: dict | None = None
    #: The :class:`graft.training.activations.ActivationCache` itself, if used.
    activations: object = None


def choose_devices(cfg: TrainConfig) -> Devices:
    """Determinism and the distribution strategy (cheap; before any data is read)."""
    if cfg.deterministic:
        distribute.enable_determinism()
    return distribute.Distribution.from_settings(cfg.distribute, cfg.devices)


def resolve_plan(cfg: TrainConfig) -> Plan:
    """The phases and the head (a plan may fix its own, e.g. lp-ft's linear probe)."""
    phases = cfg.resolved_plan()
    head = strategies.plan_head(phases)
    return Plan(phases, cfg.head if head is None else head)


def prepare_data(cfg: TrainConfig, req: Request) -> PreparedData:
    """Classify the inputs, check the files, split off validation data, weigh classes."""
    log = req.log
    train = adapter.adapt(req.data)
    if train.files is None and req.classes:
        train.classes = list(req.classes)
    known = train.files.classes if train.files is not None else None
    val = None if req.val is None else adapter.adapt(req.val, known)
    test = None if req.test is None else adapter.adapt(req.test, known)
    usable, check = adapter.checked(
        {"train": train, "val": val, "test": test}, cfg.min_size, cfg.strict, log
    )
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
    return PreparedData(train, val, test, classes, multi_label, counts, check, augment, weights)


def open_run(cfg: TrainConfig, req: Request, held) -> Path | None:
    """Lock the run folder (held until ``held``, an ``ExitStack``, closes), prepare it,
    save ``config.yaml`` and mark the run as running."""
    if req.out is None:
        if req.tensorboard:
            raise GraftError("tensorboard=True needs a run folder (out=DIR) to write logs to.")
        return None
    path = Path(req.out).expanduser()
    if path.exists() and not path.is_dir():
        raise GraftError(f"out={req.out} exists and is not a folder.")
    path.mkdir(parents=True, exist_ok=True)
    held.enter_context(lock.RunLock(path))
    run_dir = files.prepare(path, req.overwrite, req.resume)
    if not req.resume:
        config = {**cfg.as_dict(), "data": req.sources(), "safe_mode": req.safe_mode}
        if isinstance(req.backbone, keras.Model):  # resume reloads it from the run folder
            req.backbone.save(run_dir / layout.BACKBONE_FILE)
            config["backbone"] = saved_backbone(req, run_dir)
        files.write_yaml(run_dir / layout.CONFIG_FILE, make_portable(config, req.typed(), run_dir))
    checkpoints.write_status(run_dir, "running")
    return run_dir


def _weights_text(source, weights) -> str:
    """``imagenet weights``, or ``its own weights`` for a model file (not its path twice)."""
    return "its own weights" if str(weights) == str(source) else f"{weights} weights"


def build_model(cfg: TrainConfig, data: PreparedData, plan: Plan, req: Request) -> Built:
    """Resolve the backbone, prepare the source task, assemble the model and its loss."""
    model = req.backbone if isinstance(req.backbone, keras.Model) else None
    bb = building.resolve_backbone(cfg, req.safe_mode, model)
    if model is None and backbones.is_model_path(cfg.backbone):
        match_scaling(cfg, bb, data.train, req.log)
    source_task = _source_task(req, cfg, bb)
    counts = data.counts
    req.log(
        f"Backbone {bb.source} ({_weights_text(bb.source, bb.weights)}, {len(bb.blocks)} blocks, "
        f"{bb.image_size[0]}x{bb.image_size[1]}, preprocess {bb.preprocess}); "
        f"{len(data.classes)} classes, {counts['train']} train / {counts['val']} val images"
    )
    channels = data.check.channel_line(bb.channels) if data.check is not None else None
    if channels:
        req.log(channels)
    with building.precision(cfg.precision):
        head = HeadConfig(plan.head, cfg.dropout, data.multi_label, cfg.pool)
        model = assemble(bb, len(data.classes), head)
    req.log(f"Head input: {pooling_summary(model.get_layer(BACKBONE_NAME).output.shape, cfg.pool)}")
    freezing.check_plan(model, bb.blocks, plan.phases)  # every phase's spec, before epoch 1
    loss, metrics = building.task(data.multi_label)
    return Built(bb, model, loss, metrics, source_task)


def match_scaling(cfg: TrainConfig, bb: backbones.Backbone, train, log) -> None:
    """A model file's input scaling: inferred when ``preprocess`` is not given (the choice
    and its evidence are logged and kept in ``bb.scaling`` for ``config.yaml``), checked
    when it is (a clearly different choice is a warning with the same evidence)."""
    if cfg.weights is not None and str(cfg.weights).lower() == "none":
        if cfg.preprocess is None:
            log("Input scaling not inferred: weights none has no pre-trained statistics to match")
        return
    batch = next(iter(train.batches(bb.image_size, bb.channels, 128)), None)
    if batch is None:
        return
    evidence = scaling.infer(bb.model, batch[0], bb.channels)
    bb.scaling = evidence.as_dict()
    if cfg.preprocess is None:
        if evidence.clear:
            bb.preprocess = evidence.choice
        log(evidence.line()[0].upper() + evidence.line()[1:])
    elif evidence.clear and evidence.choice != cfg.preprocess:
        log(f"Warning: preprocess={cfg.preprocess} was asked for, but {evidence.line()}")


def _source_task(req: Request, cfg: TrainConfig, bb) -> drift.SourceTask | None:
    """The checked source task (``source_eval``), or ``None``."""
    source_model = req.source_model
    if req.source_eval is None:
        if source_model is not None:
            raise GraftError(
                "source_model needs source_eval (the source task's data). "
                f"Received: source_model={str(source_model)!r}"
            )
        return None
    if source_model is None:
        if not backbones.is_model_path(cfg.backbone):
            raise GraftError(
                "source_eval= needs the original classifier with its head.",
                hint="pass source_model=PATH (a .keras file whose outputs are DATA's classes).",
            )
        source_model = cfg.backbone
    return drift.SourceTask.prepare(
        source_model, req.source_eval, bb.model, bb.preprocess, req.safe_mode
    )


def make_pipelines(
    cfg: TrainConfig, data: PreparedData, bb: backbones.Backbone, devices: Devices
) -> Pipelines:
    """Training and validation ``tf.data`` pipelines (global batch = per replica x replicas)."""
    bs = cfg.batch_size * devices.replicas
    size, ch = bb.image_size, bb.channels
    train = data.train.batches(size, ch, bs, shuffle=True, seed=cfg.seed, augment=data.augment)
    val = None if data.val is None else data.val.batches(size, ch, bs)
    plain = None if data.train.labels is None else data.train.batches(size, ch, bs)
    if cfg.deterministic:
        train, val = distribute.deterministic(train), distribute.deterministic(val)
        plain = distribute.deterministic(plain)
    return Pipelines(train, val, bs, plain)


def make_trainer(
    cfg: TrainConfig, plan: Plan, data: PreparedData, built: Built, run_dir, req: Request
) -> TrainerSetup:
    """The trainer, with the checkpointer and (on resume) the checked, restored state."""
    reference = drift.snapshot(built.model)  # the pre-trained weights, before any restore
    state = checkpoints.load_state(run_dir) if req.resume else None
    prints = _fingerprints(cfg, data, built, saved_backbone(req, run_dir)) if run_dir else {}
    if state is not None:
        resume.validate(state, plan.phases, run_dir)
        resume.check_unchanged(state, prints, run_dir)
        checkpoints.restore_model(built.model, run_dir, state)
        checkpoints.restore_rng(state.rng)
        phase_index, phase_epoch = state.next_position()
        req.log(
            f"Resuming {run_dir} after epoch {state.epoch}: phase {phase_index}/"
            f"{len(plan.phases)}, {phase_epoch} of its epochs done"
        )
    elif req.resume:
        req.log(f"Resuming {run_dir}: no epoch had finished, starting from the beginning")
    checkpointer = None
    if run_dir is not None:
        checkpointer = checkpoints.Checkpointer(run_dir, req.log, fingerprints=prints)
    if state is not None:
        checkpointer.resume_from(state)
    # Before the checkpointer: each checkpoint holds the best weights so far.
    keeper = KeepBest() if cfg.keep == "best" else None
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
        log=req.log,
        verbose=req.verbose,
        jit_compile=building.jit(cfg.jit),
        class_weight=data.class_weight,
        hooks=hooks,
    )
    return TrainerSetup(trainer, checkpointer, state, reference, keeper)


def _fingerprints(cfg: TrainConfig, data: PreparedData, built: Built, saved: str | None) -> dict:
    """What the run starts with (stored with every checkpoint, checked on resume).
    A ``keras.Model`` backbone is recorded as ``saved``, the file a resume loads it from."""
    settings = cfg.as_dict() if saved is None else {**cfg.as_dict(), "backbone": saved}
    return {
        "format": fingerprints.FORMAT,
        "data": fingerprints.data_digest(data.train.raw),
        "validation": fingerprints.data_digest(None if data.val is None else data.val.raw),
        "backbone": {
            "source": fingerprints.source_digest(saved or built.bb.source),
            "weights": fingerprints.weights_digest(built.bb.model),
        },
        "settings": fingerprints.settings_digest(settings),
    }

"""The Python API: train, evaluate and load runs. The CLI is a thin layer over this.

Example:
    >>> import graft
    >>> run = graft.train("data/flowers", backbone="mobilenet_v2", strategy="hybrid",
    ...                   out="runs/flowers")                              # doctest: +SKIP
    >>> run.metrics["val_accuracy"]                                       # doctest: +SKIP
    >>> graft.evaluate("runs/flowers", "data/flowers_test")["accuracy"]   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from graft.config import strategies
from graft.config.settings import TrainConfig
from graft.core import backbones
from graft.core.model import HeadConfig, backbone_of, build_model
from graft.core.optim import make_optimizer
from graft.data import check as datacheck
from graft.data import sources as data
from graft.errors import DataError, GraftError
from graft.reporting import drift
from graft.runs import files as runs
from graft.runs import status as run_status
from graft.training import cache
from graft.training.trainer import Trainer, TrainResult


@dataclass
class Run:
    """The outcome of :func:`train`."""

    model: keras.Model
    classes: list[str]
    metrics: dict
    history: list[dict]
    config: TrainConfig
    run_dir: Path | None = None
    backbone: backbones.Backbone | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        acc = self.metrics.get("val_accuracy")
        acc_text = f", val_accuracy={acc:.4f}" if acc is not None else ""
        return f"Run(run_dir={str(self.run_dir)!r}, classes={len(self.classes)}{acc_text})"


def _as_files(source, classes=None) -> data.LabelledFiles | tuple:
    if isinstance(source, (str, os.PathLike)):
        return data.load_source(source, classes)
    if isinstance(source, data.LabelledFiles):
        return source
    if _is_tf_dataset(source):
        return source
    if isinstance(source, tuple) and len(source) == 2:
        x, y = (np.asarray(a) for a in source)
        if len(x) != len(y):
            raise DataError(f"Got {len(x)} images but {len(y)} labels.")
        if x.ndim not in (3, 4):
            raise DataError(f"Images must be an array (N, H, W[, C]), got shape {x.shape}.")
        y = y.astype("float32") if y.ndim == 2 else y.astype("int32")
        return (x if x.ndim == 4 else x[..., None], y)
    raise DataError(
        f"Unsupported data: {type(source).__name__}.",
        hint="pass a folder of class subfolders, a .csv manifest, a tuple "
        "(images, integer_labels) or a tf.data.Dataset of (image, label).",
    )


def _is_tf_dataset(source) -> bool:
    return type(source).__module__.startswith("tensorflow") and hasattr(source, "element_spec")


def _checked(cfg: TrainConfig, train_files, val, test, log):
    """Run the pre-flight check on file sources; log its summary; drop the bad files."""
    files = {"train": train_files, "val": val, "test": test}
    on_disk = {k: v for k, v in files.items() if isinstance(v, data.LabelledFiles)}
    if "train" not in on_disk:
        return train_files, val, test, None
    report = datacheck.check(
        on_disk["train"], on_disk.get("val"), on_disk.get("test"), min_size=cfg.min_size
    )
    for line in report.lines():
        log(line)
    report.raise_if_strict(cfg.strict)
    for name, usable in report.splits.items():
        files[name] = usable
    empty = [c for c, n in files["train"].counts().items() if n == 0]
    if empty:
        raise DataError(
            f"Class(es) without a single usable training image: {', '.join(empty)}.",
            hint="add readable images to them or remove their folders.",
        )
    for name in ("val", "test"):
        if isinstance(files[name], data.LabelledFiles) and not len(files[name]):
            raise DataError(f"No usable images left in the {name} data after the check.")
    return files["train"], files["val"], files["test"], report


def _task(multi_label: bool) -> tuple[str, list]:
    """Loss and metrics: softmax classes, or independent sigmoid labels."""
    if multi_label:
        return "binary_crossentropy", [keras.metrics.BinaryAccuracy(name="accuracy")]
    return "sparse_categorical_crossentropy", ["accuracy"]


def _is_multi_label(source) -> bool:
    if isinstance(source, data.LabelledFiles):
        return source.multi_label
    if isinstance(source, tuple):
        return np.asarray(source[1]).ndim == 2
    if _is_tf_dataset(source):
        return source.element_spec[1].shape.rank == (
            2 if source.element_spec[0].shape.rank == 4 else 1
        )
    return False


def _balance(cfg: TrainConfig, labels, classes, multi_label: bool, log) -> dict | None:
    """Warn about a >= 10x class imbalance; balanced class weights for --class-weight auto."""
    if labels is not None:
        labels = np.asarray(labels)
        if multi_label:
            counts = labels.reshape(-1, len(classes)).sum(axis=0)
        else:
            counts = np.bincount(labels, minlength=len(classes))
        found = data.imbalance({c: int(n) for c, n in zip(classes, counts)})
        if found:
            big, n, small, m = found
            advice = "" if cfg.class_weight == "auto" else "; consider --class-weight auto"
            log(
                f"Warning: class imbalance: '{big}' has {n} training images, '{small}' only "
                f"{m} ({n / m:.0f}x){advice}"
            )
    if cfg.class_weight != "auto":
        return None
    if labels is None:
        raise DataError(
            "--class-weight auto needs folder, CSV or array data, not a tf.data.Dataset."
        )
    weights = data.class_weights(labels, multi_label)
    log(
        "Class weights (balanced): "
        + ", ".join(f"{classes[i]} {w:.2f}" for i, w in weights.items())
    )
    return weights


def _datasets(cfg: TrainConfig, train_files, val_src, bb, classes, augment=None):
    """(train_ds, val_ds, classes, counts, train_labels) for files, arrays or tf.data."""
    if _is_tf_dataset(train_files):
        if not classes:
            raise DataError(
                "Training on a tf.data.Dataset needs the class names.",
                hint="pass classes=[...] in label order.",
            )
        size, ch, bs = bb.image_size, bb.channels, cfg.batch_size
        train_ds = data.dataset_pipeline(train_files, size, ch, bs, augment)
        val_ds = None if val_src is None else _eval_pipeline(val_src, bb, bs)
        counts = {"train": "streamed", "val": "streamed" if val_ds else 0}
        return train_ds, val_ds, classes, counts, {"train": None, "val": None}
    if isinstance(train_files, tuple):
        x, y = train_files
        classes = classes or [
            str(i) for i in range(y.shape[1] if y.ndim == 2 else int(y.max()) + 1)
        ]
        x = _fit_arrays(x, bb)
        if val_src is None and cfg.val_split:
            train_idx, val_idx = _split_indices(y, cfg.val_split, cfg.seed)
            x, y, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
        elif val_src is not None:
            x_val, y_val = val_src
            x_val = _fit_arrays(x_val, bb)
        else:
            x_val = y_val = None
        train_ds = data.array_pipeline(
            x, y, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augment
        )
        val_ds = None if x_val is None else data.array_pipeline(x_val, y_val, cfg.batch_size)
        counts = {"train": len(y), "val": 0 if y_val is None else len(y_val)}
        splits = {"train": (x, y), "val": None if x_val is None else (x_val, y_val)}
        return train_ds, val_ds, classes, counts, splits
    classes = train_files.classes
    if val_src is not None:
        val_files = val_src
    elif cfg.val_split:
        train_files, val_files = data.stratified_split(train_files, cfg.val_split, cfg.seed)
    else:
        val_files = None
    size, ch = bb.image_size, bb.channels
    train_ds = data.pipeline(
        train_files, size, ch, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augment
    )
    val_ds = None if val_files is None else data.pipeline(val_files, size, ch, cfg.batch_size)
    counts = {
        "train": len(train_files),
        "val": 0 if val_files is None else len(val_files),
        "per_class": train_files.counts(),
    }
    return train_ds, val_ds, classes, counts, {"train": train_files, "val": val_files}


def _labels_of(split):
    return split[1] if isinstance(split, tuple) else split.labels


def _eval_pipeline(source, bb, batch_size: int):
    """A pipeline for evaluation data: checked files, arrays or a tf.data.Dataset."""
    if isinstance(source, data.LabelledFiles):
        return data.pipeline(source, bb.image_size, bb.channels, batch_size)
    if isinstance(source, tuple):
        return data.array_pipeline(_fit_arrays(source[0], bb), source[1], batch_size)
    return data.dataset_pipeline(source, bb.image_size, bb.channels, batch_size)


def _split_indices(y, fraction, seed):
    classes = [str(i) for i in range(int(np.max(y)) + 1)]
    index = data.LabelledFiles([str(i) for i in range(len(y))], np.asarray(y), classes)
    train, val = data.stratified_split(index, fraction, seed)
    return [int(p) for p in train.paths], [int(p) for p in val.paths]


def _fit_arrays(x, bb):
    x = np.asarray(x)
    h, w = bb.image_size
    if x.shape[-1] != bb.channels:
        if x.shape[-1] == 1 and bb.channels == 3:
            x = np.repeat(x, 3, axis=-1)
        else:
            raise DataError(
                f"Images have {x.shape[-1]} channels; the backbone takes {bb.channels}."
            )
    if x.shape[1:3] != (h, w):
        import tensorflow as tf

        x = tf.image.resize(x.astype("float32"), (h, w)).numpy()
    return x.astype("float32")


def train(
    data_source=None,
    backbone: str | None = None,
    out: str | os.PathLike | None = None,
    *,
    val=None,
    test=None,
    classes: list[str] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    verbose="auto",
    safe_mode: bool = True,
    tensorboard: bool = False,
    source_eval=None,
    source_model: str | os.PathLike | None = None,
    budget_trials: int | None = None,
    resume: str | os.PathLike | None = None,
    **settings,
) -> Run:
    """Graft a pre-trained backbone into a new classifier and train it.

    Args:
        data_source: A folder with one subfolder per class, a ``path,label`` CSV
            manifest (``a|b`` labels make a multi-label task), ``(images, labels)``
            arrays (raw 0-255 pixels, integer or multi-hot labels), or a
            ``tf.data.Dataset`` of ``(image, label)`` (pass ``classes``). Files are
            checked first (:mod:`graft.datacheck`); bad ones are skipped.
        backbone: A registry name (``graft backbones``) or a ``.keras``/``.h5`` path.
        out: Run folder for the artifacts (``None``: keep everything in memory).
        val: Validation data like ``data_source``; default: ``val_split`` of it.
        test: Test data, evaluated once after training (``test_accuracy``,
            ``test_loss`` in the metrics).
        classes: Class names for array or tf.data labels (default ``"0"``, ``"1"``, ...).
        overwrite: Replace the files of an existing, non-empty run folder.
        log: Receives one line of text per step (``print`` by default).
        verbose: Keras ``fit`` verbosity.
        safe_mode: Refuse model files whose loading could run code.
        tensorboard: Write TensorBoard logs under ``out/tensorboard`` (needs ``out``).
        source_eval: Labelled data of the backbone's original task: source-task
            accuracy before and after training goes to ``metrics["source_task"]``
            (see :class:`graft.drift.SourceTask`).
        source_model: The original classifier (head included) for ``source_eval``;
            default: the ``backbone`` file itself (with ``cut`` dropping its head).
        budget_trials: With ``strategy="auto"``: trials of the search
            (:mod:`graft.autostrategy`).
        resume: A run folder whose training was interrupted: reload its
            ``config.yaml`` and last checkpoint and continue where it stopped
            (``data_source``/``backbone``/settings come from the folder; pass the data
            again only if it was in memory).
        **settings: Any :class:`~graft.config.TrainConfig` field: ``weights``,
            ``cut``, ``preprocess``, ``alpha``, ``image_size``, ``strategy``,
            ``epochs``, ``finetune_epochs``, ``unfreeze``, ``lr``, ``finetune_lr``,
            ``train_bn``, ``optimizer``, ``head``, ``dropout``, ``batch_size``,
            ``val_split``, ``seed``, ``augment`` (none/light/standard),
            ``class_weight`` (none/auto), ``min_size``, ``strict``, or ``phases``;
            ``lr="auto"`` runs the LR finder first; per-phase options for named
            strategies: ``lr_mult``, ``layer_decay``, ``schedule``, ``warmup_epochs``,
            ``early_stop``, ``weight_decay``, ``l2sp``, ``recalibrate_bn``; ``gradual``
            takes ``gradual_blocks``, ``gradual_step``, ``gradual_epochs``; and
            ``deterministic``, ``distribute`` (none/mirrored/multi-worker), ``devices``.

    Returns:
        A :class:`Run` with the trained model, metrics and history.
    """
    if budget_trials is not None and settings.get("strategy") != "auto":
        raise GraftError("--budget-trials is for --strategy auto.")
    if settings.get("strategy") == "auto":
        from graft.api import auto as autostrategy

        return autostrategy.train_auto(
            data_source, backbone, out, val=val, test=test, classes=classes,
            overwrite=overwrite, log=log, verbose=verbose, safe_mode=safe_mode,
            tensorboard=tensorboard, source_eval=source_eval, source_model=source_model,
            budget_trials=budget_trials, **settings,
        )  # fmt: skip
    from graft.training import checkpoints

    if resume is not None:
        out = resume
        saved = run_status.saved_config(resume)
        source = saved.get("data") or {}
        data_source = data_source if data_source is not None else source.get("train")
        val = val if val is not None else source.get("val")
        test = test if test is not None else source.get("test")
        classes = classes or source.get("classes")
        backbone = saved["backbone"]
        safe_mode = bool(saved.get("safe_mode", safe_mode))
        settings = {**TrainConfig.from_dict(saved).as_dict(), **settings}
        settings.pop("backbone")
        if data_source is None:
            raise GraftError(
                f"{resume} was trained on in-memory data, which a run folder cannot hold.",
                hint="pass the same data again: graft.train(data, resume=...).",
            )
    if data_source is None or backbone is None:
        raise GraftError("train needs data and a backbone (or resume=RUN_DIR).")
    sources = {
        "train": _source_path(data_source),
        "val": _source_path(val),
        "test": _source_path(test),
        "classes": classes,
    }
    holder: dict = {}
    try:
        return _train(
            data_source, backbone, out, val, test, classes, overwrite, log, verbose,
            safe_mode, tensorboard, resume, sources, holder, settings, source_eval, source_model,
        )  # fmt: skip
    except BaseException as exc:
        if holder.get("run_dir") is not None:
            status, details = run_status.describe_failure(exc)
            with contextlib.suppress(OSError):  # a full disk must not hide the real error
                checkpoints.write_status(holder["run_dir"], status, **details)
        raise checkpoints.as_user_error(exc, settings.get("batch_size", 32)) from None
    finally:
        if holder.get("scope") is not None:
            holder["scope"].close()  # leave the strategy scope even on failure


def _source_path(source) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source).expanduser().resolve())
    return None


def _train(
    data_source, backbone, out, val, test, classes, overwrite, log, verbose,
    safe_mode, tensorboard, resume, sources, holder, settings, source_eval=None, source_model=None,
) -> Run:  # fmt: skip
    """The body of :func:`train` (which adds resume arguments and failure status)."""
    from graft.training import checkpoints, distribute

    cfg = TrainConfig(backbone=str(backbone), **settings)
    if cfg.deterministic:
        distribute.enable_determinism()
    dist = distribute.Distribution.from_settings(cfg.distribute, cfg.devices)
    replicas = dist.replicas
    phases = cfg.resolved_plan()
    # Cheap checks first: bad data paths fail before any backbone is built or downloaded.
    data_source = _as_files(data_source)
    known = data_source.classes if isinstance(data_source, data.LabelledFiles) else None
    val = None if val is None else _as_files(val, known)
    test = None if test is None else _as_files(test, known)
    data_source, val, test, check = _checked(cfg, data_source, val, test, log)
    multi_label = _is_multi_label(data_source)
    augment = data.augmentation(cfg.augment, cfg.seed)
    run_dir = runs.prepare(out, overwrite or resume is not None) if out is not None else None
    holder["run_dir"] = run_dir
    if run_dir is not None and resume is None:
        config = {**cfg.as_dict(), "data": sources, "safe_mode": safe_mode}
        runs.write_yaml(run_dir / runs.CONFIG_FILE, config)
    if run_dir is not None:
        checkpoints.write_status(run_dir, "running")
    keras.utils.set_random_seed(cfg.seed)
    scope = holder["scope"] = contextlib.ExitStack()
    scope.enter_context(dist.scope())
    if dist.describe(cfg.batch_size):
        log(dist.describe(cfg.batch_size))
    data_cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size * replicas)
    bb = _resolve_backbone(cfg, safe_mode)
    train_ds, val_ds, classes, counts, splits = _datasets(
        data_cfg, data_source, val, bb, classes, augment
    )
    source_task = _source_task(source_eval, source_model, cfg, bb, safe_mode)
    if cfg.deterministic:
        train_ds, val_ds = distribute.deterministic(train_ds), distribute.deterministic(val_ds)
    labels = None if splits["train"] is None else _labels_of(splits["train"])
    if len(classes) < 2 and not multi_label:
        raise DataError(f"Training needs at least 2 classes; found {len(classes)}: {classes}.")
    class_weight = _balance(cfg, labels, classes, multi_label, log)
    log(
        f"Backbone {bb.source} ({bb.weights} weights, {len(bb.blocks)} blocks, "
        f"{bb.image_size[0]}x{bb.image_size[1]}, preprocess {bb.preprocess}); "
        f"{len(classes)} classes, {counts['train']} train / {counts['val']} val images"
    )
    plan_head = strategies.plan_head(phases)  # e.g. lp-ft's linear probe
    head_units = cfg.head if plan_head is None else plan_head
    with _precision(cfg.precision):
        model = build_model(bb, len(classes), HeadConfig(head_units, cfg.dropout, multi_label))
    loss, metrics_list = _task(multi_label)
    state = checkpoints.load_state(run_dir) if resume is not None else None
    if state is not None:
        checkpoints.restore_model(model, run_dir, state)
        checkpoints.restore_rng(state.rng)
        phase_index, phase_epoch = state.next_position()
        log(
            f"Resuming {run_dir} after epoch {state.epoch}: phase {phase_index}/{len(phases)}"
            f", {phase_epoch} of its epochs done"
        )
    elif resume is not None:
        log(f"Resuming {run_dir}: no epoch had finished, starting from the beginning")
    checkpointer = checkpoints.Checkpointer(run_dir, log) if run_dir is not None else None
    if state is not None:
        checkpointer.resume_from(state)
    hooks = []
    if tensorboard and run_dir is None:
        raise GraftError("tensorboard=True needs a run folder (out=...) to write logs to.")
    if tensorboard:
        from graft.training import tensorboard as tb

        hooks.append(tb.TensorBoardLogs(run_dir))
    if checkpointer is not None:
        hooks.append(checkpointer)
    trainer = Trainer(
        model,
        bb.blocks,
        loss=loss,
        metrics=metrics_list,
        log=log,
        verbose=verbose,
        class_weight=class_weight,
        jit_compile=_jit(cfg.jit),
        hooks=hooks,
    )
    start = time.perf_counter()
    lr_found = None
    if cfg.lr == "auto":
        phases, lr_found = _auto_lr(cfg, trainer, phases, train_ds, run_dir, log)
    cached = None
    if cfg.cache and any(p.recalibrate_bn for p in phases):
        log("Feature cache off: BN recalibration changes the backbone's features.")
    elif cfg.cache and any(p.backbone_frozen for p in phases):
        if augment is not None and not cfg.cache_views:
            log(
                "Feature cache off: augmentation changes every training image in every epoch, "
                "so frozen-backbone phases run the backbone on augmented images "
                "(--cache-views K caches K augmented views instead)."
            )
        elif splits["train"] is None:
            log("Feature cache off: a tf.data.Dataset source is not cached.")
        else:
            cached = cache.cached_datasets(
                model, bb, splits, data_cfg, augment=augment, log=log, verbose=1 if verbose else 0
            )
    reference = drift.snapshot(model)
    if state is not None:
        mid_phase = dist.peeks and state.next_position()[1] > 0
        checkpoints.fast_forward(train_ds, state.passes.get("full", 0) - mid_phase)
        if cached is not None:
            checkpoints.fast_forward(cached[0], state.passes.get("cached", 0) - mid_phase)
    with checkpoints.stop_on_signals(checkpointer), dist.workarounds():
        result = trainer.fit(phases, train_ds, val_ds, cached=cached, resume=state)
    seconds = time.perf_counter() - start
    scope.close()
    model = dist.finished(model)
    if tensorboard:
        tb.write_phases(run_dir, result.history)
    _compile_for_shipping(model, phases[-1], loss, metrics_list)
    metrics = _metrics(result, counts, seconds)
    if lr_found is not None:
        metrics["lr_find"] = lr_found
    if check is not None:
        metrics["data_check"] = check.counts()
        counts["skipped"] = check.skipped
    train_eval = None
    if splits["train"] is not None:
        train_eval = lambda: _eval_pipeline(splits["train"], bb, cfg.batch_size)  # noqa: E731
    feature_drift = drift.run_drift(model, reference, val_ds, train_eval, log)
    if feature_drift is not None:
        metrics["feature_drift"] = feature_drift
    if source_task is not None:
        metrics["source_task"] = source_task.accuracies(backbone_of(model))
        log(drift.source_summary_line(metrics["source_task"]))
    if class_weight is not None:
        metrics["class_weight"] = {classes[i]: round(w, 4) for i, w in class_weight.items()}
    if test is not None:
        scores = model.evaluate(
            _eval_pipeline(test, bb, cfg.batch_size), verbose=0, return_dict=True
        )
        metrics.update(test_accuracy=float(scores["accuracy"]), test_loss=float(scores["loss"]))
        metrics["test_images"] = len(test[1]) if isinstance(test, tuple) else len(test)
        log(f"Test: accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f}")
    if dist.summary(cfg.batch_size) is not None:
        metrics["distribute"] = dist.summary(cfg.batch_size)
    run = Run(model, classes, metrics, result.history, cfg, run_dir, bb)
    if run_dir is not None:
        _write_run(run, bb, {"data": sources, "safe_mode": safe_mode})
        from graft.reporting import report

        evaluated = report.finish_run(
            run_dir, model, classes, result.history, val_ds, counts, log=log
        )
        if evaluated is not None:
            run.metrics["evaluation"] = evaluated
        checkpoints.write_status(run_dir, "completed")
    return run


def _source_task(source_eval, source_model, cfg: TrainConfig, bb, safe_mode: bool):
    """The checked source task (``--source-eval``), or ``None``."""
    if source_eval is None:
        if source_model is not None:
            raise GraftError("--source-model needs --source-eval DATA (the source task's data).")
        return None
    if source_model is None:
        if not backbones.is_model_path(cfg.backbone):
            raise GraftError(
                "--source-eval needs the original classifier with its head.",
                hint="pass --source-model PATH (a .keras file whose outputs are DATA's classes).",
            )
        source_model = cfg.backbone
    return drift.SourceTask.prepare(source_model, source_eval, bb.model, bb.preprocess, safe_mode)


def _auto_lr(cfg: TrainConfig, trainer: Trainer, phases, train_ds, run_dir, log):
    """``--lr auto``: run the LR finder on the first phase; the plan with its suggestion."""
    from graft.training import lrfind

    found = lrfind.sweep(trainer, phases[0], train_ds)
    cfg.lr = float(f"{found.suggestion:.3g}")
    log(
        f"LR finder: suggested lr {cfg.lr:g} (valley of {len(found.lrs)} steps, "
        f"{found.start_lr:g} to {found.end_lr:g})"
    )
    if run_dir is not None:
        found.write(run_dir)
    return cfg.resolved_plan(), {"suggestion": cfg.lr, "steps": len(found.lrs)}


def lr_find(
    data_source,
    backbone: str,
    out: str | os.PathLike | None = None,
    *,
    phase: int = 1,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    classes: list[str] | None = None,
    log: Callable[[str], None] = print,
    safe_mode: bool = True,
    **settings,
):
    """Sweep the learning rate of one phase of a run's plan and suggest a value.

    Builds the model exactly as :func:`train` would (same settings), trains the phases
    before ``phase`` (if any), then runs :func:`graft.lrfind.sweep`, which leaves the
    weights as they were before the sweep.

    Args:
        data_source: Training data, as for :func:`train`.
        backbone: As for :func:`train`.
        out: Folder for ``lr_find.csv`` and ``lr_find.png`` (``None``: write nothing).
        phase: Which phase of the plan to sweep (1-based; default: the first, the head).
        start_lr: First learning rate.
        end_lr: Last learning rate.
        steps: Batches in the sweep.
        classes: Class names for array labels.
        log: Receives one line per step.
        safe_mode: Refuse model files whose loading could run code.
        **settings: :class:`~graft.config.TrainConfig` fields (``strategy``,
            ``unfreeze``, ``head``, ``batch_size``, ...).

    Returns:
        A :class:`graft.lrfind.LRFindResult`.
    """
    from graft.training import lrfind

    settings.setdefault("val_split", 0.0)
    cfg = TrainConfig(backbone=str(backbone), **settings)
    phases = cfg.resolved_plan()
    if not 1 <= phase <= len(phases):
        raise GraftError(f"--phase must be 1..{len(phases)} for this plan, got {phase}.")
    data_source = _as_files(data_source)
    data_source, _, _, _ = _checked(cfg, data_source, None, None, log)
    keras.utils.set_random_seed(cfg.seed)
    bb = _resolve_backbone(cfg, safe_mode)
    train_ds, _, classes, _, _ = _datasets(cfg, data_source, None, bb, classes)
    multi_label = _is_multi_label(data_source)
    head = strategies.plan_head(phases)
    model = build_model(
        bb, len(classes), HeadConfig(cfg.head if head is None else head, cfg.dropout, multi_label)
    )
    loss, metrics_list = _task(multi_label)
    trainer = Trainer(model, bb.blocks, loss=loss, metrics=metrics_list, log=log, verbose=0)
    if phase > 1:
        trainer.fit(phases[: phase - 1], train_ds)
    found = lrfind.sweep(trainer, phases[phase - 1], train_ds, start_lr, end_lr, steps)
    if out is not None:
        found.write(out)
    return found


def _resolve_backbone(cfg: TrainConfig, safe_mode: bool) -> backbones.Backbone:
    """The run's backbone, built under its precision policy."""
    with _precision(cfg.precision):
        return backbones.resolve(
            cfg.backbone,
            weights=cfg.weights,
            image_size=cfg.image_size,
            alpha=cfg.alpha,
            cut=cfg.cut,
            preprocess=cfg.preprocess,
            safe_mode=safe_mode,
        )


@contextlib.contextmanager
def _precision(mode: str):
    """Build layers under a mixed policy: float16 on GPUs, bfloat16 on CPUs.

    The head's output layer is always float32 (see ``graft.model``).
    """
    if mode != "mixed":
        yield
        return
    previous = keras.mixed_precision.global_policy()
    gpu = any(d.device_type == "GPU" for d in _devices())
    keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _devices():
    try:
        import tensorflow as tf

        return tf.config.list_physical_devices()
    except ImportError:
        return []


def _jit(mode: str):
    return {"auto": "auto", "on": True, "off": False}[mode]


def _compile_for_shipping(
    model: keras.Model, last_phase, loss="sparse_categorical_crossentropy", metrics=("accuracy",)
) -> None:
    """Recompile with a plain, serialisable optimizer so model.keras loads anywhere."""
    plain = type(last_phase)(**{**last_phase.as_dict(), "backbone_lr": None, "trainable": "none"})
    optimizer = make_optimizer(plain, model)
    model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics))
    optimizer.build(model.trainable_variables)  # saved state matches what loading rebuilds


def _metrics(result: TrainResult, counts: dict, seconds: float) -> dict:
    last = result.history[-1] if result.history else {}
    metrics = {k: last[k] for k in ("val_accuracy", "val_loss", "accuracy", "loss") if k in last}
    metrics.update(
        train_images=counts["train"],
        val_images=counts["val"],
        epochs=len(result.history),
        seconds=round(seconds, 2),
        phases=[p.as_dict() for p in result.phases],
    )
    return metrics


def _write_run(run: Run, bb: backbones.Backbone, extra: dict | None = None) -> None:
    d = run.run_dir
    runs.save_model(run.model, d / runs.MODEL_FILE)
    runs.write_json(d / runs.LABELS_FILE, run.classes)
    config = run.config.as_dict()
    config["resolved_backbone"] = bb.describe()
    config["classes"] = run.classes
    config["multi_label"] = _model_is_multi_label(run.model)
    config["versions"] = _versions()
    config.update(extra or {})
    runs.write_yaml(d / runs.CONFIG_FILE, config)
    runs.write_csv(d / runs.HISTORY_FILE, run.history)
    runs.write_json(d / runs.METRICS_FILE, run.metrics)


def _versions() -> dict:
    from graft import __version__

    info = {
        "graft": __version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "backend": keras.backend.backend(),
    }
    try:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    except ImportError:
        pass
    return info


def load(model_or_run: str | os.PathLike, safe_mode: bool = True) -> tuple[keras.Model, list[str]]:
    """Load a trained model and its class names from a run folder or a ``.keras`` file."""
    path = Path(model_or_run).expanduser()
    model_file = path / runs.MODEL_FILE if path.is_dir() else path
    if not model_file.is_file():
        raise GraftError(
            f"No model at {model_or_run}.",
            hint="pass a run folder made by 'graft train' or a .keras file.",
        )
    try:
        model = keras.saving.load_model(model_file, safe_mode=safe_mode)
    except Exception as exc:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if safe_mode and ("safe_mode" in text or "Lambda" in text):
            raise GraftError(
                f"{model_file} contains code (a Lambda layer) that would run when loaded; refused.",
                hint="only if you trust the file, pass --unsafe (safe_mode=False in Python).",
            ) from None
        raise GraftError(f"Cannot load {model_file}: {text}") from None
    labels_dir = model_file.parent
    if (labels_dir / runs.LABELS_FILE).is_file():
        classes = runs.read_labels(labels_dir)
    else:
        classes = [str(i) for i in range(model.output_shape[-1])]
    return model, classes


def labelled_batches(
    model: keras.Model,
    data_source,
    classes: list[str],
    batch_size: int = 32,
    min_size: int = datacheck.DEFAULT_MIN_SIZE,
):
    """Labelled ``(images, labels)`` batches of ``data_source`` sized for ``model``.

    Files go through the pre-flight check first; files it rejects are skipped.

    Args:
        model: The model whose input size the images are resized to.
        data_source: A folder of class subfolders or a CSV manifest (classes known to
            the model), ``(images, labels)`` arrays, or a ``tf.data.Dataset``.
        classes: The model's class names (fixes the label order).
        batch_size: Images per batch.
        min_size: Smallest image side the check accepts.

    Returns:
        ``(dataset, number_of_images_or_None, number_of_skipped_files)``.
    """
    _, h, w, ch = model.input_shape
    files = _as_files(data_source, classes)
    if isinstance(files, tuple):
        x, y = files
        return data.array_pipeline(x, y, batch_size), len(y), 0
    if _is_tf_dataset(files):
        return data.dataset_pipeline(files, (h, w), ch, batch_size), None, 0
    report = datacheck.check(files, min_size=min_size)
    files, skipped = report.splits["train"], report.skipped
    if not len(files):
        raise DataError(f"No usable images in {files.source} (all {skipped} skipped).")
    return data.pipeline(files, (h, w), ch, batch_size), len(files), skipped


def check_data(
    data_source,
    val=None,
    test=None,
    min_size: int = datacheck.DEFAULT_MIN_SIZE,
    classes: list[str] | None = None,
) -> datacheck.CheckReport:
    """The pre-flight check of :func:`train`, on its own (nothing is converted or written).

    Args:
        data_source: A folder of class subfolders or a CSV manifest.
        val: Validation data to check with it (for leakage across splits).
        test: Test data to check with it.
        min_size: Smallest allowed image side in pixels.
        classes: Fix the class list (default: from ``data_source``).

    Returns:
        A :class:`graft.datacheck.CheckReport`.
    """
    files = data.load_source(data_source, classes)
    val = None if val is None else data.load_source(val, files.classes)
    test = None if test is None else data.load_source(test, files.classes)
    return datacheck.check(files, val, test, min_size=min_size, convert=False)


def _model_is_multi_label(model: keras.Model) -> bool:
    try:
        activation = model.get_layer("head_output").activation
    except ValueError:
        return False
    return getattr(activation, "__name__", "") == "sigmoid"


def evaluate(
    model_or_run,
    data_source,
    batch_size: int = 32,
    min_size: int = datacheck.DEFAULT_MIN_SIZE,
    safe_mode: bool = True,
) -> dict:
    """Accuracy, loss, top-k, per-class precision/recall/F1, confusion and calibration.

    Args:
        model_or_run: A run folder or a ``.keras`` file (with ``labels.json`` beside it).
        data_source: A folder of class subfolders or a CSV manifest (classes must be
            known to the model), ``(images, labels)`` arrays or a ``tf.data.Dataset``.
            Files are checked first; unusable ones are skipped and counted.
        batch_size: Images per batch.
        min_size: Smallest image side the check accepts.
        safe_mode: Refuse model files whose loading could run code (Lambda layers).

    Returns:
        ``{"accuracy", "loss", "images", "skipped", "top_k_accuracy", "per_class",
        "macro_avg", "weighted_avg", "confusion_matrix", "ece", ...}``
        (see :func:`graft.evaluation.classification_metrics`).
    """
    from graft.reporting import evaluation

    model, classes = load(model_or_run, safe_mode=safe_mode)
    ds, _, skipped = labelled_batches(model, data_source, classes, batch_size, min_size)
    result = evaluation.evaluate_model(model, ds, classes).as_dict()
    result["skipped"] = skipped
    return result

"""The last steps of a training run (fit, finalize, measure, write) and :func:`execute`.

The first steps are in :mod:`graft.api.steps`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import keras

from graft import progress
from graft.api import building
from graft.api import steps as s
from graft.api.result import Run
from graft.config.paths import AS_TYPED, make_portable
from graft.config.settings import TrainConfig
from graft.core import model_utils
from graft.core.model import backbone_of
from graft.data.pipelines import load_image
from graft.reporting import drift, plots, report
from graft.reporting.plot_worker import PlotWorker
from graft.runs import files, layout
from graft.runs import metrics as run_metrics
from graft.runs import status as run_status
from graft.runs.model_io import is_multi_label
from graft.training import activations, cache, checkpoints, derived, resume


def execute(req: s.Request) -> Run:
    """Run every step of a training run; on failure, record why in ``status.json``."""
    run_dir, started = None, time.perf_counter()
    held = contextlib.ExitStack()  # the run folder's lock, released last
    if req.verbose == 0:  # nobody watches: no progress lines either
        held.enter_context(progress.silenced())
    try:
        with contextlib.ExitStack() as scope:
            cfg = TrainConfig(backbone=s.backbone_setting(req.backbone), **req.settings)
            devices = s.choose_devices(cfg)
            plan = s.resolve_plan(cfg)
            data = s.prepare_data(cfg, req)  # cheap checks first: nothing is built yet
            run_dir = s.open_run(cfg, req, held)
            held.enter_context(resume.signals_interrupt(run_dir))
            keras.utils.set_random_seed(cfg.seed)
            scope.enter_context(devices.scope())
            if devices.describe(cfg.batch_size):
                req.log(devices.describe(cfg.batch_size))
            built = s.build_model(cfg, data, plan, req)
            pipes = s.make_pipelines(cfg, data, built.bb, devices)
            setup = s.make_trainer(cfg, plan, data, built, run_dir, req)
            fitted = fit(cfg, plan, data, built, pipes, setup, devices, run_dir, req)
            worker = _draw_curves(fitted, run_dir)  # on the other core, from now on
            model = finalize(built, fitted, devices, scope, run_dir, req)
            metrics = measure(cfg, model, data, built, pipes, fitted, devices, req)
            run = Run(model, data.classes, metrics, fitted.result.history, cfg, run_dir, built.bb)
            evaluated_on = _evaluated_on(model, built.bb, fitted, data)
            test = _test(cfg, data, built)
            # every timing is a "seconds" key (tests compare runs without them)
            metrics["whole_run"] = {"seconds": round(time.perf_counter() - started, 2)}
            return write(
                run, req, pipes.val, _paths(data.val), *evaluated_on, test=test, worker=worker
            )
    except BaseException as exc:
        if run_dir is not None:
            status, details = run_status.describe_failure(exc)
            with contextlib.suppress(OSError):  # a full disk must not hide the real error
                checkpoints.write_status(run_dir, status, **details)
        raise checkpoints.as_user_error(exc, req.settings.get("batch_size", 32)) from None
    finally:
        held.close()


def fit(
    cfg: TrainConfig,
    plan: s.Plan,
    data: s.PreparedData,
    built: s.Built,
    pipes: s.Pipelines,
    setup: s.TrainerSetup,
    devices: s.Devices,
    run_dir: Path | None,
    req: s.Request,
) -> s.Fitted:
    """(``lr="auto"``: find the learning rate,) cache features, train every phase."""
    start = time.perf_counter()
    phases, lr_found = plan.phases, None
    if cfg.lr == "auto":
        phases, lr_found = _auto_lr(cfg, setup.trainer, plan, pipes.train, run_dir, req.log)
    # Activations first: the head phase's features are then derived from them (one
    # bottom pass per image, graft.training.derived).
    acts = _activation_cache(cfg, phases, data, built, pipes, req)
    cached = _feature_cache(cfg, phases, data, built, pipes, req, acts)
    reference = setup.reference
    state = setup.state
    if state is not None:
        mid_phase = devices.peeks and state.next_position()[1] > 0
        checkpoints.fast_forward(pipes.train, state.passes.get("full", 0) - mid_phase)
        if cached is not None:
            checkpoints.fast_forward(cached.train, state.passes.get("cached", 0) - mid_phase)
        if acts is not None:
            checkpoints.fast_forward(acts.train, state.passes.get("activations", 0) - mid_phase)
    with (
        checkpoints.stop_on_signals(setup.checkpointer),
        devices.workarounds(),
    ):
        result = setup.trainer.fit(
            phases,
            pipes.train,
            pipes.val,
            cached=cached,
            resume=state,
            train_eval=pipes.train_eval,
            activations=acts,
        )
    seconds = time.perf_counter() - start
    summary = None if acts is None else acts.summary
    return s.Fitted(
        result, phases, seconds, lr_found, reference, setup.keeper, cached, summary, acts
    )


def _auto_lr(cfg: TrainConfig, trainer, plan: s.Plan, train_ds, run_dir, log):
    """``lr="auto"``: run the LR finder on the first phase; the plan with its suggestion."""
    from graft.training import lrfind

    found = lrfind.sweep(trainer, plan.phases[0], train_ds)
    cfg.lr = float(f"{found.suggestion:.3g}")
    log(
        f"LR finder: suggested lr {cfg.lr:g} (valley of {len(found.lrs)} steps, "
        f"{found.start_lr:g} to {found.end_lr:g})"
    )
    if run_dir is not None:
        found.write(run_dir)
    return cfg.resolved_plan(), {"suggestion": cfg.lr, "steps": len(found.lrs)}


def _raw_splits(data: s.PreparedData, bb) -> dict:
    """The train and val splits as files or arrays at the backbone's input size."""
    return {
        name: None if split is None else split.fitted(bb.image_size, bb.channels).raw
        for name, split in (("train", data.train), ("val", data.val))
    }


def _activation_cache(cfg: TrainConfig, phases, data: s.PreparedData, built, pipes, req):
    """Cached bottom activations for partial fine-tuning phases, or ``None``."""
    if not cfg.cache or data.train.labels is None:
        return None
    data_cfg = dataclasses.replace(cfg, batch_size=pipes.batch_size)
    return activations.cached_activations(
        built.model,
        built.bb,
        built.bb.blocks,
        phases,
        _raw_splits(data, built.bb),
        data_cfg,
        augment=data.augment,
        log=req.log,
    )


def _feature_cache(cfg: TrainConfig, phases, data: s.PreparedData, built, pipes, req, acts=None):
    """Cached backbone features for frozen-backbone phases, or ``None`` (and why, logged)."""
    log = req.log
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
    splits = _raw_splits(data, bb)
    data_cfg = dataclasses.replace(cfg, batch_size=pipes.batch_size)
    derive = derived.from_activations(acts, built.model, pipes.batch_size)
    return cache.cached_datasets(
        built.model,
        bb,
        splits,
        data_cfg,
        augment=data.augment,
        log=log,
        verbose=req.verbose or 0,
        derive=derive,
    )


def _draw_curves(fitted: s.Fitted, run_dir) -> PlotWorker | None:
    """Start drawing the training curves in a second process (see :func:`write`)."""
    if run_dir is None or not fitted.result.history:
        return None
    worker = PlotWorker()
    path = Path(run_dir) / plots.PLOTS_DIR / plots.CURVES
    worker.submit("training_curves", fitted.result.history, path)
    return worker


def finalize(built: s.Built, fitted: s.Fitted, devices: s.Devices, scope, run_dir, req):
    """Leave the distribution scope, write TensorBoard's phases, compile for shipping."""
    model = built.model
    scope.close()
    model = devices.finished(model)
    if req.tensorboard:
        from graft.training import tensorboard as tb

        tb.write_phases(run_dir, fitted.result.history)
    building.compile_for_shipping(model, fitted.phases[-1], built.loss, built.metrics)
    _keep(model, fitted, run_dir, req.log)
    return model


def kept_row(fitted: s.Fitted) -> dict:
    """The history row of the epoch ``model.keras`` holds (the last one unless best kept)."""
    history = fitted.result.history
    best = fitted.keeper.best if fitted.keeper is not None else None
    if best is not None:
        return next((r for r in history if r["epoch"] == best["epoch"]), history[-1])
    return history[-1] if history else {}


def _keep(model: keras.Model, fitted: s.Fitted, run_dir, log) -> None:
    """``keep="best"``: save the last epoch as ``last.keras``, then hold the best epoch."""
    keeper, history = fitted.keeper, fitted.result.history
    if keeper is None or not history:
        return
    if run_dir is not None:
        files.save_model(model, Path(run_dir) / layout.LAST_MODEL_FILE)
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
    cfg: TrainConfig,
    model: keras.Model,
    data: s.PreparedData,
    built: s.Built,
    pipes: s.Pipelines,
    fitted: s.Fitted,
    devices: s.Devices,
    req: s.Request,
) -> dict:
    """The run's metrics: the kept epoch, data counts, drift, source task, test scores."""
    log, bb = req.log, built.bb
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
    metrics.update(
        train_images=data.counts["train"],
        val_images=data.counts["val"],
        epochs=len(fitted.result.history),
        seconds=round(fitted.seconds, 2),
        phases=[p.as_dict() for p in fitted.result.phases],
        data=data.counts,
    )
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
        model, fitted.reference, pipes.val, train_eval, log, data.counts, through
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
    if data.test is not None:
        test_ds = data.test.batches(bb.image_size, bb.channels, cfg.batch_size)
        scores = model.evaluate(test_ds, verbose=0, return_dict=True)
        metrics.update(test_accuracy=float(scores["accuracy"]), test_loss=float(scores["loss"]))
        metrics["test_images"] = data.test.count
        log(f"Test: accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f}")
    if devices.summary(cfg.batch_size) is not None:
        metrics["distribute"] = devices.summary(cfg.batch_size)
    return metrics


def _evaluated_on(model: keras.Model, bb, fitted: s.Fitted, data: s.PreparedData) -> tuple:
    """``(val_batches, model, pixels)`` for the end-of-run evaluation when it can skip the
    backbone: the validation features are cached and the backbone ended the run with
    exactly the weights they were computed with (every phase left it frozen). The head
    alone then predicts on them, and only the worst errors' images are read. Or else the
    top of the model on the cached activations of its bottom, if that ended the run with
    the weights they were computed with (float16 activations: within their parity bound,
    :data:`graft.training.activations.PARITY`). Else ``()``.
    """
    cached, val = fitted.cached, None if data.val is None else data.val.files
    if val is None:
        return ()
    paths, size, channels = list(val.paths), bb.image_size, bb.channels
    found = ()
    # (drift: the shipped model, undistributed)
    if cached is not None and cached.val is not None and drift.unchanged(model, fitted.reference):
        found = cached.val, model_utils.head_model(model)
    elif fitted.activations is not None:
        found = fitted.activations.evaluator(model)
    return (*found, lambda i: load_image(paths[i], size, channels)) if found else ()


def _drift_inputs(model: keras.Model, fitted: s.Fitted) -> tuple | None:
    """``(features model, batches)``: drift on the cached validation activations of a
    bottom no phase changed (only the top of the backbone runs), or ``None``."""
    found = () if fitted.activations is None else fitted.activations.evaluator(model)
    if not found:
        return None
    return derived.features_top(model, fitted.activations.boundary), found[0]


def _paths(split) -> list[str] | None:
    """The files of a split in its (unshuffled) batch order; ``None`` for in-memory data."""
    files_ = None if split is None else split.files
    return None if files_ is None else [str(p) for p in files_.paths]


def _test(cfg: TrainConfig, data: s.PreparedData, built: s.Built) -> tuple | None:
    """``(batches, paths)`` of the test split, for the report's worst errors."""
    if data.test is None:
        return None
    bb = built.bb
    return data.test.batches(bb.image_size, bb.channels, cfg.batch_size), _paths(data.test)


def write(
    run: Run,
    req: s.Request,
    val_ds,
    val_paths: list[str] | None = None,
    eval_ds=None,
    eval_model=None,
    pixels=None,
    test=None,
    worker: PlotWorker | None = None,
) -> Run:
    """Save the run folder's artifacts, evaluate, draw, report; mark it completed.

    ``eval_ds``/``eval_model``/``pixels``: evaluate the head on cached validation features
    instead of ``run.model`` on ``val_ds`` (see :func:`_evaluated_on`). ``test``:
    ``(batches, paths)`` of the test split, whose worst errors the report shows.
    ``worker``: draws the plots (:mod:`graft.reporting.plot_worker`).
    """
    d = run.run_dir
    if d is None:
        return run
    files.save_model(run.model, d / layout.MODEL_FILE)
    files.write_json(d / layout.LABELS_FILE, run.classes)
    config = run.config.as_dict()
    config["resolved_backbone"] = run.backbone.describe()
    config["classes"] = run.classes
    config["multi_label"] = is_multi_label(run.model)
    config["versions"] = building.versions()
    config.update(data=req.sources(), safe_mode=req.safe_mode)
    if s.saved_backbone(req, d):
        config["backbone"] = s.saved_backbone(req, d)
    with contextlib.suppress(Exception):  # a resumed run keeps the spellings of its start
        config[AS_TYPED] = files.read_yaml(d / layout.CONFIG_FILE, {}).get(AS_TYPED)
    files.write_yaml(d / layout.CONFIG_FILE, make_portable(config, req.typed(), d))
    files.write_csv(d / layout.HISTORY_FILE, run.history)
    run_metrics.record(d, run.metrics, fresh=True)
    # Training is over and its files are saved: the report written next shows this status
    # (a failure while evaluating still marks the run failed, in execute).
    checkpoints.write_status(d, "completed")
    with progress.status("Evaluating and writing the report"):
        evaluated = report.finish_run(
            d,
            run.model,
            run.classes,
            run.history,
            val_ds if eval_ds is None else eval_ds,
            log=req.log,
            paths=val_paths,
            test=test,
            head=eval_model,
            pixels=pixels,
            worker=worker,
        )
    if evaluated is not None:
        run.metrics["evaluation"] = evaluated
    return run

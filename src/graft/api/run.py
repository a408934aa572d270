"""The facade: :func:`train` and :func:`lr_find`.

Example:
    >>> import graft
    >>> run = graft.train("data/flowers", backbone="mobilenet_v2", strategy="hybrid",
    ...                   out="runs/flowers")                              # doctest: +SKIP
    >>> run.metrics["val_accuracy"]                                       # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import keras

from graft.api import pipeline as p
from graft.api import preflight
from graft.api.pipeline import execute
from graft.api.result import Run
from graft.config.settings import TrainConfig
from graft.errors import GraftError
from graft.runs import status as run_status
from graft.training.trainer import Trainer


def train(
    data_source=None,
    backbone=None,
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
            checked first (:mod:`graft.data.check`); bad ones are skipped.
        backbone: A registry name (``graft backbones``), a ``.keras``/``.h5`` path, a
            KerasHub preset directory, or a ``keras.Model`` object (saved into the run
            folder as ``backbone.keras`` so that ``resume`` can rebuild it).
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
            (see :class:`graft.reporting.drift.SourceTask`).
        source_model: The original classifier (head included) for ``source_eval``;
            default: the ``backbone`` file itself (with ``cut`` dropping its head).
        budget_trials: With ``strategy="auto"``: trials of the search
            (:mod:`graft.api.auto`).
        resume: A run folder whose training was interrupted: reload its
            ``config.yaml`` and last checkpoint and continue where it stopped
            (``data_source``/``backbone``/settings come from the folder; pass the data
            again only if it was in memory).
        **settings: Any :class:`~graft.config.TrainConfig` field (``strategy``,
            ``epochs``, ``lr``, ``finetune_lr``, ``unfreeze``, ``batch_size``, ...).

    Returns:
        A :class:`Run` with the trained model, metrics and history.
    """
    if budget_trials is not None and settings.get("strategy") != "auto":
        raise GraftError(
            "budget_trials is for strategy='auto'. "
            f"Received: budget_trials={budget_trials}, strategy={settings.get('strategy')!r}"
        )
    if resume is not None:
        out = resume
        saved = run_status.saved_config(resume)
        _note_died(resume, log)
        source = saved.get("data") or {}
        data_source = data_source if data_source is not None else source.get("train")
        val = val if val is not None else source.get("val")
        test = test if test is not None else source.get("test")
        classes = classes or source.get("classes")
        backbone = saved.get("backbone")
        # safe_mode is the caller's (the command line's), never the run folder's: a run
        # folder is data someone may hand you, and its config.yaml must not enable code.
        settings = _resumed_settings(resume, saved, settings)
        if data_source is None:
            raise GraftError(
                f"{resume} was trained on in-memory data, which a run folder cannot hold.",
                hint="pass the same data again: graft.train(data, resume=...).",
            )
    if data_source is None or backbone is None:
        raise GraftError("train needs data and a backbone (or resume=RUN_DIR).")
    if resume is None:  # names, paths and the run folder, before any data is read
        preflight.check_train(
            data_source, backbone, out, val=val, test=test, overwrite=overwrite, settings=settings
        )
    request = p.Request(
        data_source,
        backbone,
        out,
        val=val,
        test=test,
        classes=classes,
        overwrite=overwrite,
        log=log,
        verbose=verbose,
        safe_mode=safe_mode,
        tensorboard=tensorboard,
        source_eval=source_eval,
        source_model=source_model,
        resume=resume is not None,
        settings=settings,
    )
    if settings.get("strategy") == "auto":
        from graft.api import auto

        return auto.train_auto(request, budget_trials)
    return execute(request)


def _resumed_settings(resume, saved: dict, given: dict) -> dict:
    """The saved settings; a setting given again must equal the saved one (a resumed run
    continues the run it was, it is not silently changed or silently left unchanged)."""
    try:
        settings = TrainConfig.from_dict(saved).as_dict()
    except (TypeError, ValueError) as exc:
        raise GraftError(f"Cannot resume {resume}: its config.yaml is invalid: {exc}") from None
    differ = {k: v for k, v in given.items() if k not in settings or settings[k] != v}
    if differ:
        shown = ", ".join(f"{k}={v!r} (the run has {settings.get(k)!r})" for k, v in differ.items())
        raise GraftError(
            f"resume continues {resume} with its own settings; refusing other ones. "
            f"Received: {shown}",
            hint="drop them to resume, or start a new run with another out=DIR.",
        )
    settings.pop("backbone", None)
    return settings


def _note_died(resume, log) -> None:
    now = run_status.read_status(resume)
    if now.get("died"):
        log(f"Note: the last process on {resume} (pid {now.get('pid')}) died without a word.")


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

    Builds the model exactly as :func:`train` would (same steps and settings), trains the
    phases before ``phase`` (if any), then runs :func:`graft.training.lrfind.sweep`,
    which leaves the weights as they were before the sweep.

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
        A :class:`graft.training.lrfind.LRFindResult`.
    """
    from graft.training import lrfind

    settings.setdefault("val_split", 0.0)
    req = p.Request(
        data_source, backbone, classes=classes, log=log, safe_mode=safe_mode, settings=settings
    )
    # One device, whatever the settings say: the sweep is short and leaves no weights.
    ctx = p.Context.of(req)
    plan = ctx.plan
    if not 1 <= phase <= len(plan.phases):
        raise GraftError(
            f"phase must be 1..{len(plan.phases)} for this plan. Received: phase={phase}"
        )
    data = dataclasses.replace(p.prepare_data(ctx), augment=None)  # sweep unaugmented
    keras.utils.set_random_seed(ctx.cfg.seed)
    built = p.build_model(ctx, data)
    pipes = p.make_pipelines(ctx, data, built.bb)
    trainer = Trainer(
        built.model, built.bb.blocks, loss=built.loss, metrics=built.metrics, log=log, verbose=0
    )
    if phase > 1:
        trainer.fit(list(plan.phases[: phase - 1]), pipes.train)
    found = lrfind.sweep(trainer, plan.phases[phase - 1], pipes.train, start_lr, end_lr, steps)
    if out is not None:
        found.write(out)
    return found

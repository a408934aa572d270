"""``--strategy auto``: choose strategy, unfreeze depth and learning rates by measurement.

A small KerasTuner search (``--budget-trials N``, default :data:`DEFAULT_TRIALS`) over

- ``strategy``: the grafting strategies (``feature``, ``hybrid``, ``finetune``);
- ``lr``: the head's learning rate;
- ``unfreeze_blocks`` (``blocks:N``) and ``finetune_lr``: only for strategies that
  unfreeze part of the backbone (KerasTuner conditional hyperparameters).

Every trial is a short, in-memory :func:`graft.api.pipeline.execute` run on the same split and
seed (:data:`TRIAL_EPOCHS` epochs, the feature cache makes frozen-backbone trials
cheap), scored by validation accuracy (ties: lower validation loss, then the earlier
trial). The chosen configuration is then trained with the full epoch budget into the
run folder, and ``RUN_DIR/auto_search.json`` records the space, every trial and the choice.

Auto never loses to training from scratch: after the search, the best transfer
configuration and the scratch baseline (:func:`graft.api.compare.scratch_phase`: fresh
weights, everything trains, precise BN) are both trained with the full epoch budget (the
most epochs any strategy gets), and the one with the better validation accuracy (ties:
lower validation loss) is the run. A short scratch trial would say nothing about a full
one, so scratch is a finalist rather than a trial. Budget: ``budget_trials`` short trials
plus two full-budget runs (three when scratch wins: it is retrained into the run folder).

Few labels (``val_split="auto"`` draws k-fold, :func:`few_label_folds`): no search and no
hold-out; feature, hybrid (graft's defaults) and scratch are each cross-validated on the
same folds and the choice follows the one-standard-error rule (:func:`choose_by_folds`):
a few folds of a few images cannot separate candidates closer than one standard error,
so among those the first of :data:`FEW_LABEL_PREFERENCE` wins. The winner is then trained
on every labelled image. One image in a class: :data:`PRIOR_STRATEGY`, said so.

The classic guidance is the *prior*, not the decision: the first trial is the space's
default, which is feature extraction with a shallow unfreeze depth for small datasets
(fewer than :data:`SMALL_DATA` training images per class) and hybrid fine-tuning of
two blocks with a higher backbone rate otherwise; the remaining trials sample the space
at random, and the measured best wins whatever the prior said.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time

from graft.api.compare import SCRATCH
from graft.config.defaults import DEFAULT_VAL_SPLIT
from graft.config.names import AUTO_CUT
from graft.errors import GraftError
from graft.runs.layout import AUTO_SEARCH_FILE as AUTO_FILE  # noqa: F401

DEFAULT_TRIALS = 4
TRIAL_EPOCHS = 3
#: Few labels: candidates are cross-validated on one repeat of at most this many folds
#: (each candidate is a whole training run per fold).
MAX_CV_FOLDS = 3
#: Few labels: the strategies cross-validated (with graft's defaults), then scratch.
#: ``finetune`` is left out: from a converged probe (hybrid, LP-FT) fine-tuning does at
#: least as well as from a random head (Kumar et al. 2022), and every candidate costs a
#: whole run per fold.
FEW_LABEL_CANDIDATES = ("feature", "hybrid")
#: One labelled image in a class: nothing can be validated; auto trains this prior.
PRIOR_STRATEGY = "hybrid"
#: Few labels: among the candidates within one standard error of the best cross-validated
#: accuracy, the first in this order wins. A few folds of a few images cannot separate
#: candidates closer than that (at 2 images per class, 10 validation predictions: one image
#: is 0.1), and on the few-shot bench hybrid >= feature at every K and transfer beats
#: scratch at K <= 4 (bench/results-few-shot-cpu.md); scratch wins only when clearly better.
FEW_LABEL_PREFERENCE = ("hybrid", "feature", "scratch")
SMALL_DATA = 30
STRATEGY_ORDER_SMALL = ("feature", "hybrid", "finetune")
STRATEGY_ORDER_LARGE = ("hybrid", "finetune", "feature")
HEAD_LRS = (1e-3, 3e-3, 3e-4)
BACKBONE_LRS = (1e-5, 1e-4, 1e-3)


def search_space(images_per_class: float, blocks: int):
    """The KerasTuner space; its defaults encode the classic guidance for this data size.

    Args:
        images_per_class: Training images per class.
        blocks: Blocks of the backbone (the deepest unfreeze depth tried is ``min(4, blocks)``).

    Returns:
        A ``keras_tuner.HyperParameters``.
    """
    import keras_tuner as kt

    from graft.config.strategies import STRATEGIES

    small = images_per_class < SMALL_DATA
    order = [
        s for s in (STRATEGY_ORDER_SMALL if small else STRATEGY_ORDER_LARGE) if s in STRATEGIES
    ]
    hp = kt.HyperParameters()
    hp.Choice("strategy", order, default=order[0])
    hp.Choice("lr", list(HEAD_LRS), default=HEAD_LRS[0])
    unfreezing = [s for s in order if s != "feature"]
    if unfreezing:
        with hp.conditional_scope("strategy", unfreezing):
            deepest = max(1, min(4, blocks))
            hp.Int("unfreeze_blocks", 1, deepest, default=1 if small else min(2, deepest))
            hp.Choice("finetune_lr", list(BACKBONE_LRS), default=BACKBONE_LRS[0 if small else 1])
    return hp


def settings_of(values: dict, trial_epochs: int | None = None) -> dict:
    """graft settings for a trial's hyperparameter values (short epochs if ``trial_epochs``)."""
    settings = {"strategy": values["strategy"], "lr": float(values["lr"])}
    if "unfreeze_blocks" in values:
        settings["unfreeze"] = f"blocks:{int(values['unfreeze_blocks'])}"
        settings["finetune_lr"] = float(values["finetune_lr"])
    if trial_epochs is not None:
        if values["strategy"] == "hybrid":  # the same total number of epochs as the others
            settings["epochs"] = max(1, trial_epochs // 2)
            settings["finetune_epochs"] = max(1, trial_epochs - trial_epochs // 2)
        else:
            settings["epochs"] = trial_epochs
    return settings


def _oracle_class():
    import keras_tuner as kt
    from keras_tuner.src.engine import trial as trial_module

    class PriorFirstOracle(kt.oracles.RandomSearchOracle):
        """Random search whose first trial is the space's defaults (the prior)."""

        def populate_space(self, trial_id):
            if not self.start_order:
                space = self.get_space()
                values = {hp.name: hp.default for hp in space.space if space.is_active(hp)}
                return {"status": trial_module.TrialStatus.RUNNING, "values": values}
            return super().populate_space(trial_id)

    return PriorFirstOracle


def _images_per_class(source, val, settings: dict) -> tuple[float, str]:
    labels = source.labels
    if labels is None:
        return float(SMALL_DATA), "unknown (tf.data)"
    n, classes = len(labels), len(source.classes)
    if val is None:
        split = settings.get("val_split", DEFAULT_VAL_SPLIT)
        n *= 1 - float(DEFAULT_VAL_SPLIT if split == "auto" else split)
    return n / max(1, classes), f"{n / max(1, classes):.1f}"


def search(
    request,
    budget_trials: int = DEFAULT_TRIALS,
    trial_epochs: int = TRIAL_EPOCHS,
) -> dict:
    """Run the search; returns the record written to ``auto_search.json``.

    Args:
        request: The run to search for (a :class:`graft.api.pipeline.Request`; its
            ``settings`` are shared by all trials, its data and validation data are used
            for every trial, its ``out``/``test``/reporting options are not).
        budget_trials: Number of trials.
        trial_epochs: Epochs per trial.

    Returns:
        ``{"objective", "budget_trials", "trial_epochs", "images_per_class", "prior",
        "space", "trials": [{"trial", "settings", "val_accuracy", "val_loss",
        "seconds"}], "chosen_trial", "chosen"}``.
    """
    import keras_tuner as kt

    from graft.api.pipeline import execute
    from graft.core import backbones
    from graft.data.adapter import adapt

    if budget_trials < 1:
        raise GraftError(
            f"budget_trials must be at least 1. Received: budget_trials={budget_trials}"
        )
    settings, log = request.settings, request.log
    _check_validation(request.val, settings)
    source = adapt(request.data)
    per_class, per_class_text = _images_per_class(source, request.val, settings)
    bb = backbones.resolve(
        request.backbone,
        weights=settings.get("weights"),
        image_size=settings.get("image_size"),
        alpha=settings.get("alpha"),
        cut=settings.get("cut"),
        preprocess=settings.get("preprocess"),
        safe_mode=request.safe_mode,
    )
    hp = search_space(per_class, len(bb.blocks))
    prior = {p.name: p.default for p in hp.space if hp.is_active(p)}
    records: list[dict] = []
    failure: list[BaseException] = []

    class Search(kt.engine.base_tuner.BaseTuner):
        def run_trial(self, trial, *args, **kwargs):
            values = dict(trial.hyperparameters.values)
            trial_settings = {**settings, **settings_of(values, trial_epochs)}
            start = time.perf_counter()
            try:
                run = execute(dataclasses.replace(_quiet(request, trial_settings), data=source))
            except GraftError as exc:
                failure.append(exc)
                raise kt.errors.FatalError(str(exc)) from exc
            metrics = run.metrics
            try:
                accuracy, loss = _scores(metrics)
            except GraftError as exc:
                failure.append(exc)
                raise kt.errors.FatalError(str(exc)) from exc
            record = {
                "trial": len(records) + 1,
                "settings": settings_of(values),
                "val_accuracy": accuracy,
                "val_loss": loss,
                "feature_drift_cka": (metrics.get("feature_drift") or {}).get("cka"),
                "seconds": round(time.perf_counter() - start, 2),
            }
            records.append(record)
            log(
                f"Auto trial {record['trial']}/{budget_trials}: {_describe(record['settings'])}"
                f" -> val_accuracy {record['val_accuracy']:.4f}"
            )
            return {"val_accuracy": record["val_accuracy"]}

    full = settings.get("epochs")
    if isinstance(full, int) and full > 0:  # a trial is a short run, never a longer one
        trial_epochs = min(trial_epochs, full)
    trials = f"{budget_trials} trial" + ("s" if budget_trials != 1 else "")
    epochs = f"{trial_epochs} epoch" + ("s" if trial_epochs != 1 else "")
    budget = f" (the finalists train for epochs={full})" if full not in (None, trial_epochs) else ""
    log(
        f"Auto strategy: {trials} of {epochs} each{budget}, "
        f"{per_class_text} training images per class; "
        f"first (prior): {_describe(settings_of(prior))}"
    )
    with tempfile.TemporaryDirectory(prefix="graft-auto-") as work:
        oracle = _oracle_class()(
            objective=kt.Objective("val_accuracy", "max"),
            max_trials=budget_trials,
            hyperparameters=hp,
            seed=int(settings.get("seed", 0)),
        )
        tuner = Search(oracle=oracle, directory=work, project_name="search", overwrite=True)
        try:
            tuner.search(verbose=0)
        except kt.errors.FatalError:
            if failure:
                raise failure[0] from None
            raise
    if not records:
        raise GraftError("strategy=auto: no trial finished.")
    best = min(records, key=lambda r: (-r["val_accuracy"], r["val_loss"], r["trial"]))
    return {
        "objective": "val_accuracy (ties: val_loss, then the earlier trial)",
        "budget_trials": budget_trials,
        "trial_epochs": trial_epochs,
        "images_per_class": round(per_class, 2),
        "prior": settings_of(prior),
        "space": [p.get_config() for p in hp.space],
        "trials": records,
        "chosen_trial": best["trial"],
        "chosen": best["settings"],
    }


def _epochs(settings: dict, default: int) -> int:
    """The ``epochs`` setting as a number (``"auto"`` or absent: ``default``)."""
    epochs = settings.get("epochs", "auto")
    return default if epochs == "auto" else int(epochs)


def few_label_folds(request, settings: dict, source):
    """The folds ``val_split="auto"`` draws for ``source`` when they are not a hold-out
    (few labels: k-fold, or ``"none"`` when a class has one image), else ``None``: a
    given ``val``, a given fraction, a stream, multi-label data or enough images for a
    hold-out keep the search on a hold-out."""
    from graft.data.folds import plan_folds

    if request.val is not None or settings.get("val_split", "auto") != "auto":
        return None
    if source.labels is None or source.multi_label:
        return None
    # one repeat of at most MAX_CV_FOLDS folds: every candidate trains once per fold
    seed = int(settings.get("seed", 0))
    folds = plan_folds(source.labels, seed, "auto", min_scores=1, max_folds=MAX_CV_FOLDS)
    return None if folds.kind == "holdout" else folds


def _holdout_settings(settings: dict) -> dict:
    """``settings`` with ``val_split`` a fraction: with enough images the search scores
    trials and finalists on a stratified hold-out (``"auto"`` -> :data:`DEFAULT_VAL_SPLIT`)."""
    if settings.get("val_split", "auto") != "auto":
        return settings
    return {**settings, "val_split": DEFAULT_VAL_SPLIT}


def cross_validate(request, settings: dict, source, folds, choice: dict) -> dict:
    """One candidate's score under the few-label protocol: trained on each fold's
    training part, scored on its validation part (:func:`few_label_folds`), the *last*
    epoch's model (keep-best on the scored fold would choose on it).
    ``{"val_accuracy", "val_loss", "val_accuracy_std", "folds", "scores", "seconds"}``."""
    import numpy as np

    from graft.api.pipeline import execute

    start = time.perf_counter()
    accuracies, losses, predictions = [], [], 0
    for train_idx, val_idx in folds.splits:
        predictions += len(val_idx)
        fold = {**settings, **runnable(choice), "keep": "last", "val_split": 0}
        run = execute(
            dataclasses.replace(
                _quiet(request, fold), data=source.subset(train_idx), val=source.subset(val_idx)
            )
        )
        accuracy, loss = _scores(run.metrics)
        accuracies.append(accuracy)
        losses.append(loss)
    return {
        "val_accuracy": round(float(np.mean(accuracies)), 4),
        "val_accuracy_std": round(float(np.std(accuracies)), 4),
        "val_loss": round(float(np.mean(losses)), 4),
        "folds": len(accuracies),
        "predictions": predictions,
        "scores": [round(a, 4) for a in accuracies],
        "seconds": round(time.perf_counter() - start, 2),
    }


def search_by_folds(request, settings: dict, source, folds) -> dict:
    """Few labels (``val_split="auto"`` chose k-fold): :data:`FEW_LABEL_CANDIDATES` with
    graft's defaults and scratch (:func:`scratch_choice`, its budget in optimizer steps)
    scored by :func:`cross_validate` on the same folds; the record of
    ``auto_search.json`` with ``chosen`` the best (ties: lower validation loss, then
    the earlier candidate). The winner is then trained on every labelled image."""
    candidates = [{"strategy": s} for s in FEW_LABEL_CANDIDATES]
    candidates.append(scratch_choice(str(request.backbone), settings, len(source.labels)))
    k = len(folds.splits)
    names = ", ".join(_describe(c) for c in candidates)
    request.log(
        f"Auto strategy: few labels, so every candidate ({names}) "
        f"is scored by {k}-fold cross-validation on the same folds ({len(candidates) * k} "
        "in-memory runs), then the best is trained on every labelled image"
    )
    records = []
    for i, choice in enumerate(candidates, start=1):
        scores = cross_validate(request, settings, source, folds, choice)
        records.append({"trial": i, "settings": choice, **scores})
        request.log(
            f"Auto candidate {i}/{len(candidates)}: {_describe(choice)} -> val_accuracy "
            f"{scores['val_accuracy']:.4f} +- {scores['val_accuracy_std']:.4f} ({k}-fold)"
        )
    chosen, best, se = choose_by_folds(records)
    if chosen is not best:
        request.log(
            f"Auto strategy: {_describe(best['settings'])} scored best, but "
            f"{_describe(chosen['settings'])} is within one standard error of it "
            f"({chosen['val_accuracy']:.4f} vs {best['val_accuracy']:.4f}, SE {se:.4f} over "
            f"{best['predictions']} validation predictions): taking "
            f"{_describe(chosen['settings'])}, first in the order "
            f"{', '.join(FEW_LABEL_PREFERENCE)}"
        )
    return {
        "objective": (
            f"val_accuracy, {k}-fold cross-validated; within one standard error of the best, "
            f"the first of {', '.join(FEW_LABEL_PREFERENCE)}"
        ),
        "protocol": folds.as_dict(),
        "images_per_class": round(len(source.labels) / max(1, len(source.classes)), 2),
        "trials": records,
        "best_trial": best["trial"],
        "standard_error": round(se, 4),
        "chosen_trial": chosen["trial"],
        "chosen": chosen["settings"],
    }


def choose_by_folds(records: list[dict]) -> tuple[dict, dict, float]:
    """The few-label choice among cross-validated candidates (:func:`cross_validate`
    records): the best accuracy (ties: lower validation loss, then the earlier), its
    standard error ``sqrt(p(1-p)/n)`` over its ``n`` validation predictions (``p``
    smoothed as ``(correct+1)/(n+2)``: never 0), and among the candidates within one
    standard error of it the first in :data:`FEW_LABEL_PREFERENCE` (the one-standard-error
    rule, Hastie et al. 2009, 7.10). ``(chosen, best, se)``."""
    best = min(records, key=lambda r: (-r["val_accuracy"], r["val_loss"], r["trial"]))
    n = max(1, int(best["predictions"]))
    p = (best["val_accuracy"] * n + 1) / (n + 2)
    se = math.sqrt(p * (1 - p) / n)
    near = [r for r in records if r["val_accuracy"] >= best["val_accuracy"] - se - 1e-9]

    def rank(record):
        strategy = record["settings"]["strategy"]
        order = FEW_LABEL_PREFERENCE.index(strategy) if strategy in FEW_LABEL_PREFERENCE else 99
        return (order, -record["val_accuracy"], record["val_loss"], record["trial"])

    return min(near, key=rank), best, se


def _scores(metrics: dict) -> tuple[float, float]:
    """``(val_accuracy, val_loss)`` of a trial or finalist, or one clear error when the
    hold-out was empty (every class has one labelled image)."""
    if "val_accuracy" not in metrics or "val_loss" not in metrics:
        raise GraftError(
            "strategy=auto chooses by validation accuracy, but the hold-out has no images "
            "(no class has 2 labelled images).",
            hint="label more images, pass val=DATA, or choose a strategy.",
        )
    return float(metrics["val_accuracy"]), float(metrics["val_loss"])


def _check_validation(val, settings: dict) -> None:
    if val is None and not settings.get("val_split", 0.2):
        raise GraftError(
            "strategy=auto chooses by validation accuracy and needs validation data.",
            hint="pass val=DATA or a val_split above 0.",
        )


def _quiet(request, settings: dict):
    """``request`` as an in-memory, silent run with ``settings`` (a trial or a finalist)."""
    return dataclasses.replace(
        request,
        out=None,
        test=None,
        overwrite=False,
        log=lambda _line: None,
        verbose=0,
        tensorboard=False,
        source_eval=None,
        source_model=None,
        resume=False,
        settings=settings,
    )


def _describe(settings: dict) -> str:
    text = settings["strategy"]
    if "lr" in settings:
        text += f" lr {settings['lr']:g}"
    if "epochs" in settings and settings["strategy"] == SCRATCH:
        text += f", {settings['epochs']} epochs"
    if "unfreeze" in settings:
        text += f", {settings['unfreeze']} at {settings['finetune_lr']:g}"
    return text


def scratch_choice(backbone: str, settings: dict, images: int | None = None) -> dict:
    """The scratch finalist as recorded in ``auto_search.json``: its lr and epoch budget
    (the most epochs any strategy gets; with ``images`` known and ``epochs="auto"``, at
    least :func:`graft.config.budget.scratch_epochs`'s optimizer steps). A cut chosen by
    measurement needs pre-trained weights: scratch then trains the whole model."""
    from graft.api.compare import scratch_budget
    from graft.config.strategies import STRATEGIES

    lr = settings.get("lr")
    strategies = [s for s in STRATEGY_ORDER_SMALL if s in STRATEGIES]
    choice = {
        "strategy": SCRATCH,
        "lr": 1e-3 if lr in (None, "auto") else float(lr),
        "epochs": scratch_budget(backbone, strategies, settings, images),
    }
    return choice | ({"cut": None} if settings.get("cut") == AUTO_CUT else {})


def runnable(chosen: dict) -> dict:
    """graft settings of a choice (scratch becomes fresh weights and its one phase)."""
    if chosen["strategy"] != SCRATCH:
        return dict(chosen)
    from graft.api.compare import scratch_phase

    phase = scratch_phase(chosen["epochs"], chosen["lr"])
    cut = {"cut": chosen["cut"]} if "cut" in chosen else {}
    return {"weights": "none", "phases": [phase], **cut}


def with_cut_choice(settings: dict, source) -> dict:
    """``settings`` in which every transfer candidate chooses where to cut the backbone
    by measurement (``cut="auto"``: the converged probe at every block end, on the
    images that run trains on) when no cut was given and there is something to measure
    with: pre-trained weights and single-label labelled images. Scratch keeps the whole
    model (:func:`scratch_choice`)."""
    if settings.get("cut") is not None or source.labels is None or source.multi_label:
        return settings
    weights = settings.get("weights")  # None: the backbone's pre-trained weights
    if weights is not None and str(weights).lower() == "none":
        return settings
    return {**settings, "cut": AUTO_CUT}


def _better(a: dict, b: dict) -> bool:
    """Whether metrics ``a`` beat ``b`` (validation accuracy; ties: validation loss)."""
    return (a["val_accuracy"], -a["val_loss"]) > (b["val_accuracy"], -b["val_loss"])


def _search_then_finalists(request, settings: dict, overwrite: bool, budget_trials, images):
    """Enough labels for a hold-out: the KerasTuner search (:func:`search`), then its best
    transfer configuration and scratch (its budget in steps for the ``images`` it trains
    on, if known) trained with the full budget, the better on the hold-out kept.
    ``(run, record, chosen)``."""
    from graft.api.pipeline import execute

    settings = _holdout_settings(settings)
    _check_validation(request.val, settings)
    record = search(
        dataclasses.replace(request, settings=settings),
        budget_trials=budget_trials or DEFAULT_TRIALS,
        trial_epochs=min(TRIAL_EPOCHS, _epochs(settings, TRIAL_EPOCHS)),
    )
    if images is not None and request.val is None:  # it trains on the hold-out's other part
        images = int(round(images * (1 - float(settings["val_split"]))))
    scratch = scratch_choice(str(request.backbone), settings, images)
    transfer = record["chosen"]
    request.log(
        f"Auto search: best transfer {_describe(transfer)} (trial {record['chosen_trial']}: "
        f"val_accuracy {record['trials'][record['chosen_trial'] - 1]['val_accuracy']:.4f} over "
        f"{len(record['trials'])} trial(s)); finalists with the full epoch budget: it and "
        f"scratch ({scratch['epochs']} epochs)"
    )
    baseline = execute(_quiet(request, {**settings, **runnable(scratch)})).metrics
    final = dataclasses.replace(request, overwrite=overwrite, settings={**settings, **transfer})
    run = execute(final)
    record["finalists"] = [
        {"settings": c, **dict(zip(("val_accuracy", "val_loss"), _scores(m)))}
        for c, m in ((transfer, run.metrics), (scratch, baseline))
    ]
    chosen = transfer
    if _better(baseline, run.metrics):
        chosen = scratch
        request.log(
            f"Auto strategy: scratch beat {_describe(transfer)} on validation "
            f"({baseline['val_accuracy']:.4f} vs {run.metrics['val_accuracy']:.4f}); "
            "training scratch into the run folder"
        )
        run = execute(
            dataclasses.replace(request, overwrite=True, settings={**settings, **runnable(chosen)})
        )
    return run, record, chosen


def train_auto(request, budget_trials: int | None = None):
    """``strategy="auto"``: search, then train the choice into the run folder.

    Args:
        request: The run (a :class:`graft.api.pipeline.Request`; ``auto_search.json`` is
            written into its ``out``).
        budget_trials: Trials of the search (default :data:`DEFAULT_TRIALS`).

    Returns:
        The :class:`graft.api.Run` of the chosen configuration, with
        ``metrics["auto_search"]`` (chosen settings and trial count).
    """
    from graft.api.pipeline import execute
    from graft.data.adapter import adapt
    from graft.runs import files, layout
    from graft.runs import metrics as run_metrics

    settings = {k: v for k, v in request.settings.items() if k != "strategy"}
    if settings.get("phases") is not None:
        raise GraftError("strategy='auto' chooses the phases itself; drop the custom plan.")
    source = adapt(request.data)
    settings = with_cut_choice(settings, source)
    folds = few_label_folds(request, settings, source)
    if folds is None:
        _check_validation(request.val, _holdout_settings(settings))  # before any write
    overwrite = request.overwrite
    if request.out is not None:
        files.prepare(request.out, overwrite)  # fail before searching
        overwrite = True
    if folds is not None and folds.kind == "none":
        chosen = {"strategy": PRIOR_STRATEGY}
        request.log(
            f"Auto strategy: {folds.reason}, so nothing can be cross-validated or searched; "
            f"training the prior, {PRIOR_STRATEGY} (a converged linear probe, then "
            "fine-tuning), on every labelled image"
        )
        record = {"objective": None, "protocol": folds.as_dict(), "trials": [], "chosen": chosen}
        run = execute(dataclasses.replace(request, overwrite=overwrite, settings=settings | chosen))
    elif folds is not None:
        record = search_by_folds(request, settings, source, folds)
        chosen = record["chosen"]
        final = {**settings, **runnable(chosen)}
        run = execute(dataclasses.replace(request, overwrite=overwrite, settings=final))
    else:
        images = None if source.labels is None else len(source.labels)
        run, record, chosen = _search_then_finalists(
            request, settings, overwrite, budget_trials, images
        )
    request.log(f"Auto strategy chose {_describe(chosen)}")
    record["chosen"] = chosen
    run.metrics["auto_search"] = {"chosen": chosen, "trials": len(record["trials"])}
    if run.run_dir is not None:
        files.write_json(run.run_dir / layout.AUTO_SEARCH_FILE, record)
        run_metrics.record(run.run_dir, {"auto_search": run.metrics["auto_search"]})
    return run

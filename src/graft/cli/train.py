"""``graft train``, ``graft lr-find`` and ``graft compare``: settings from flags (and
a ``--config`` file), one API call, a summary."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from graft.cli import options
from graft.cli.base import (
    GraftCommand,
    SettingOption,
    console,
    fit_verbosity,
    import_backend,
    log,
)
from graft.errors import GraftError

#: Settings whose explicit flag means "build the plan from the flags", not the file's phases.
_PLAN_FLAGS = {
    "strategy",
    "epochs",
    "finetune_epochs",
    "unfreeze",
    "lr",
    "finetune_lr",
    "train_bn",
    "optimizer",
}


def _opt(*decls, group: str, **kwargs):
    return click.option(*decls, cls=SettingOption, group=group, **kwargs)


_PATH = click.Path(path_type=Path)
_plan_option = _opt("--plan", "plan_file", group="strategy", help="A YAML list of phases.")
_unsafe_option = _opt(
    "--unsafe",
    group="model",
    is_flag=True,
    help="Allow model files with Lambda layers (runs code).",
)


@click.command(cls=GraftCommand, needs_backend=False)
@click.argument("data", required=False)
@_opt(
    "--config",
    "config_file",
    group="run",
    type=_PATH,
    help="Start from the settings in this YAML file (e.g. an earlier run's config.yaml); "
    "flags given on the command line override them.",
)
@_opt(
    "--out",
    "-o",
    group="run",
    type=_PATH,
    help="Run folder for model and reports (default: runs/train-N, the next free N).",
)
@_opt(
    "--resume",
    group="run",
    type=_PATH,
    help="Continue an interrupted run from its folder's last checkpoint.",
)
@_opt("--overwrite", group="run", is_flag=True, help="Reuse a non-empty run folder.")
@_opt(
    "--tensorboard", group="run", is_flag=True, help="TensorBoard logs under RUN_DIR/tensorboard."
)
@_unsafe_option
@_opt("--val", group="data", help="Validation folder or .csv (instead of --val-split).")
@_opt("--test", group="data", help="Test folder or .csv, evaluated once at the end.")
@_opt(
    "--source-eval",
    group="run",
    help="Labelled data of the backbone's original task: source accuracy before/after.",
)
@_opt(
    "--source-model",
    group="run",
    help="The original classifier for --source-eval (default: the --backbone file).",
)
@_plan_option
@_opt("--print-plan", group="strategy", is_flag=True, help="Print the resolved plan and exit.")
@_opt(
    "--budget-trials",
    group="strategy",
    type=int,
    help="--strategy auto: number of search trials (default 4).",
)
@options.settings()
@click.pass_context
def train(ctx, data, config_file, out, resume, val, test, plan_file, print_plan, **settings):
    """Train a classifier on DATA (a folder of class subfolders, or a path,label .csv).

    An interrupted run (Ctrl-C, SIGTERM, a kill) continues with --resume RUN_DIR."""
    if resume is not None:
        import_backend()
        from graft import api

        run = api.train(
            resume=resume,
            log=log,
            verbose=fit_verbosity(),
            safe_mode=not settings["unsafe"],
            **_given_with_resume(
                ctx,
                settings,
                dict(data=data, config=config_file, out=out, val=val, test=test, plan=plan_file),
            ),
        )
        _closing_lines(run)
        return
    unsafe = settings.pop("unsafe")
    api_args = {k: settings.pop(k) for k in ("overwrite", "tensorboard", "source_eval")}
    api_args.update(source_model=settings.pop("source_model"))
    api_args.update(budget_trials=settings.pop("budget_trials"))
    if config_file is not None:
        settings = _with_config_file(ctx, config_file, settings)
        data, val, test = _config_data(config_file, data, val, test)
    if plan_file is not None:
        settings["phases"] = _load_plan(plan_file)
    backbone = settings.pop("backbone")
    if print_plan:
        if not backbone:
            raise GraftError("Missing --backbone.", hint="pass --backbone NAME or --config FILE.")
        _print_plan(backbone, settings)
        return
    if data is None or not backbone:
        raise GraftError(
            "train needs DATA and --backbone.",
            hint="or --config FILE for the settings, or --resume RUN_DIR to continue a run.",
        )
    from graft.api import preflight

    if out is None:
        out = preflight.default_out()
        log(f"Run folder: {out} (no --out given)")

    # Every mistake that needs no model is refused before TensorFlow is imported.
    preflight.check_train(
        data, backbone, out, val=val, test=test, overwrite=api_args["overwrite"], settings=settings
    )
    import_backend()
    from graft import api  # after --print-plan and the checks, which answer without Keras

    run = api.train(
        data,
        backbone,
        out,
        val=val,
        test=test,
        log=log,
        verbose=fit_verbosity(),
        safe_mode=not unsafe,
        **api_args,
        **settings,
    )
    _closing_lines(run)


def _closing_lines(run) -> None:
    """The last lines of a run, new or resumed: its metrics, folder and report."""
    acc = run.metrics.get("val_accuracy")
    summary = f"val_accuracy {acc:.4f}; " if acc is not None else ""
    protocol = run.metrics.get("val_protocol") or {}
    if acc is not None and protocol.get("cross_validated"):
        std = run.metrics.get("val_accuracy_std", 0.0)
        summary = f"val_accuracy {acc:.4f} +- {std:.4f} ({protocol['k']}-fold cross-validated); "
    if "test_accuracy" in run.metrics:
        summary += f"test_accuracy {run.metrics['test_accuracy']:.4f}; "
    import time

    from graft.cli.base import STARTED

    wall = time.perf_counter() - STARTED  # the whole command, not only its training
    took = f"Done in {wall:.1f} s (training {run.metrics['seconds']:.1f} s)"
    log(f"{took}: {summary}saved to {run.run_dir}/")
    log(f"Report: {run.report_file}")


def _load_plan(path):
    from graft.config import plans

    return plans.load(path)


def _given_with_resume(ctx, settings: dict, arguments: dict) -> dict:
    """The settings given on the command line with --resume (the library refuses any that
    differ from the run's); ``arguments`` (DATA, --config, --out, --val, --test, --plan)
    cannot apply to a resumed run and are refused when given."""
    from click.core import ParameterSource

    given = {
        k: v
        for k, v in settings.items()
        if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    }
    # --unsafe is how this process may load files, not a setting of the run: it may differ.
    given.pop("unsafe", None)
    extra = [
        k
        for k in ("overwrite", "tensorboard", "source_eval", "source_model", "budget_trials")
        if k in given
    ]
    extra += [k for k, v in arguments.items() if v is not None]
    if extra:
        flags = ", ".join("DATA" if k == "data" else "--" + k.replace("_", "-") for k in extra)
        raise GraftError(
            f"--resume continues a run with its own data and settings; {flags} cannot apply.",
            hint="drop them, or start a new run with another --out.",
        )
    return given


def _with_config_file(ctx, path: Path, settings: dict) -> dict:
    """Settings from a TrainConfig YAML file, overridden by flags given explicitly."""
    from click.core import ParameterSource

    from graft.config.settings import read_settings

    loaded = read_settings(path)
    explicit = {
        name
        for name in settings
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
    }
    merged = dict(settings)
    for key, value in loaded.items():
        if key == "head" and "head" not in explicit:
            merged["head"] = tuple(value)  # YAML gives a list; a setting is immutable
        elif key == "phases":
            # A run's config.yaml records its resolved phases; a plan flag on the command
            # line (e.g. --epochs) must rebuild the plan, not be silently outvoted by them.
            if not explicit & _PLAN_FLAGS:
                merged["phases"] = value
        elif key not in explicit:
            merged[key] = value
    return merged


def _config_data(path: Path, data, val, test):
    """Without DATA on the command line, the data a run's config.yaml records (and its
    --val/--test unless given)."""
    from graft.config.paths import saved_sources

    if data is not None:
        return data, val, test
    saved = saved_sources(path)
    if "train" in saved:
        log(f"Data from {path}: {saved['train']}")
    return saved.get("train"), val or saved.get("val"), test or saved.get("test")


def _print_plan(backbone: str, settings: dict) -> None:
    from graft.config import plans
    from graft.config.phase import Plan
    from graft.config.settings import TrainConfig

    cfg = TrainConfig(backbone=str(backbone), **settings)
    plan = Plan.of(cfg.resolved_plan(), cfg.head)
    rows = plans.rows(list(plan.phases))
    title = f"Plan: {cfg.strategy if cfg.phases is None else 'custom'}"
    table = Table(*rows[0].keys(), title=title)
    for row in rows:
        table.add_row(*row.values())
    Console(width=max(console.width, 160)).print(table)  # a plan is wide: never truncate it
    head = plan.head
    lr_note = " (lr auto: the LR finder replaces the head lr)" if cfg.lr == "auto" else ""
    log(f"Head: {list(head) or 'linear'} hidden units, dropout {cfg.dropout:g}{lr_note}")


#: lr-find builds the model as train would: the model, strategy and optimisation
#: settings, and these; the sweep uses all of DATA (no validation split).
_LR_FIND_SETTINGS = ("batch_size", "seed", "precision", "min_size", "strict")


@click.command("lr-find", cls=GraftCommand)
@click.argument("data")
@_opt("--out", "-o", group="run", required=True, type=_PATH, help="Folder for CSV + PNG.")
@_plan_option
@_opt("--phase", group="run", type=int, default=1, show_default=True, help="Phase to sweep.")
@_opt("--start-lr", group="run", type=float, default=1e-7, show_default=True, help="First LR.")
@_opt("--end-lr", group="run", type=float, default=10.0, show_default=True, help="Last LR.")
@_opt("--steps", group="run", type=int, default=100, show_default=True, help="Batches to sweep.")
@_unsafe_option
@options.settings(
    _LR_FIND_SETTINGS,
    groups=("model", "strategy", "optimisation"),
    backbone={"required": True},
)
def lr_find(data, out, plan_file, unsafe, phase, start_lr, end_lr, steps, **settings):
    """Sweep the learning rate on DATA, plot loss vs LR and suggest a value (valley rule)."""
    from graft import api

    if plan_file is not None:
        settings["phases"] = _load_plan(plan_file)
    if not 0 < start_lr < end_lr or steps < 2:
        raise GraftError("Need 0 < --start-lr < --end-lr and --steps of at least 2.")
    found = api.lr_find(
        data,
        settings.pop("backbone"),
        out,
        phase=phase,
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
        log=log,
        safe_mode=not unsafe,
        **settings,
    )
    log(f"Swept {len(found.lrs)} steps from {found.start_lr:g} to {found.lrs[-1]:.3g}")
    log(f"Loss vs LR: {out / 'lr_find.png'}; values: {out / 'lr_find.csv'}")
    log(f"Suggested lr (valley): {found.suggestion:.3g}")


@click.command(cls=GraftCommand)
@click.argument("data")
@_opt(
    "--strategies",
    group="strategy",
    default="feature,finetune,hybrid",
    show_default=True,
    help="Comma-separated strategies (any of graft's, plus scratch).",
)
@_opt(
    "--seeds",
    group="strategy",
    type=int,
    default=1,
    show_default=True,
    help="Train every row with N seeds (--seed, --seed + 1, ...); report mean ± std.",
)
def compare(data, strategies, seeds, out, val, test, overwrite, unsafe, **settings):
    """Train several strategies on DATA with the same split and seed; compare them.

    Takes the options of 'graft train' (shared by every run); runs go to OUT/<strategy>.
    """
    from graft.api import compare as compare_mod
    from graft.config.settings import SETTINGS

    for name in [k for k in settings if k not in SETTINGS]:
        if settings.pop(name) not in (None, False, ()):
            raise GraftError(f"--{name.replace('_', '-')} is not supported by graft compare.")
    rows = compare_mod.compare(
        data,
        out=out,
        strategies=strategies,
        val=val,
        test=test,
        overwrite=overwrite,
        log=log,
        verbose=fit_verbosity(),
        safe_mode=not unsafe,
        seeds=seeds,
        **settings,
    )
    table = Table(*compare_mod.COLUMNS)
    for r in rows:
        table.add_row(
            *(compare_mod.cell(r.get(c), c, r.get(f"{c}_std")) for c in compare_mod.COLUMNS)
        )
    Console(width=max(console.width, 160)).print(table)  # a table is wide: never cut it
    log(f"Comparison: {out / compare_mod.CSV_FILE}, .md and {compare_mod.PLOT_FILE}")


# Every 'graft train' option that configures a run is shared by the compared runs.
_NOT_FOR_COMPARE = {"data", "strategy", "tensorboard", "source_eval", "source_model"}
_NOT_FOR_COMPARE |= {"budget_trials"}
compare.params.extend(
    p for p in train.params if p.name not in _NOT_FOR_COMPARE | {q.name for q in compare.params}
)

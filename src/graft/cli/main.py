"""The ``graft`` command line: parse flags, call the library, print results.

Nothing here decides anything about training; every command is a few lines over
:mod:`graft.api`. Errors a user can cause print one line on stderr and exit 2; a
failure while working exits 1; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from graft import _quiet
from graft.errors import GraftError

console = Console()
_state = {"debug": False, "verbose": False}
_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=_CONTEXT)
@click.version_option(package_name="keras-graft", prog_name="graft")
@click.option("--verbose", "-v", is_flag=True, help="Show TensorFlow's own logs.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def app(verbose: bool, debug: bool):
    """Graft a pre-trained Keras model into your own classifier: feature extraction,
    fine-tuning and hybrid, done right."""
    _state.update(debug=debug, verbose=verbose)
    _quiet.import_backend(verbose)


def _fit_verbosity():
    return 1 if sys.stdout.isatty() else 2


def _log(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


def _min_size_option(command):
    return click.option(
        "--min-size",
        type=int,
        default=16,
        show_default=True,
        help="Skip images whose width or height is below N pixels.",
    )(command)


def _lr(value):
    if value is None or isinstance(value, float) or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise GraftError(f"--lr must be a number or 'auto', got {value!r}.") from None


def _strategy_options(command):
    """Options of the per-block rates, schedules and regularisers (train, lr-find)."""
    options = [
        click.option("--plan", "plan_file", default=None, help="A YAML list of phases."),
        click.option(
            "--print-plan", is_flag=True, help="Print the resolved plan and exit (no training)."
        ),
        click.option(
            "--lr-mult",
            type=float,
            default=None,
            help="Discriminative rates: block d below the top trainable one gets x F^d.",
        ),
        click.option(
            "--layer-decay",
            type=float,
            default=None,
            help="Layer-wise decay: block i from the backbone's top gets lr x D^i.",
        ),
        click.option(
            "--schedule",
            default=None,
            help="Per-phase LR schedule: constant | cosine | onecycle | plateau.",
        ),
        click.option("--warmup-epochs", type=int, default=None, help="Warm-up epochs (cosine)."),
        click.option(
            "--early-stop",
            type=int,
            default=None,
            metavar="PATIENCE",
            help="Stop a phase after PATIENCE epochs without improvement; keep its best epoch.",
        ),
        click.option(
            "--weight-decay",
            type=float,
            default=None,
            help="Decoupled weight decay (never BN weights or biases).",
        ),
        click.option(
            "--l2sp",
            type=float,
            default=None,
            metavar="ALPHA",
            help="L2-SP: pull backbone weights toward their pre-trained values.",
        ),
        click.option(
            "--recalibrate-bn",
            is_flag=True,
            help="AdaBN: re-estimate BN statistics on the training images first.",
        ),
        click.option("--gradual-blocks", type=int, default=None, help="gradual: blocks in all."),
        click.option(
            "--gradual-step", type=int, default=1, show_default=True, help="gradual: per phase."
        ),
        click.option("--gradual-epochs", type=int, default=None, help="gradual: epochs/phase."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _load_plan(path):
    from graft.config import plans

    return plans.load(path)


def _print_plan(backbone: str, **settings) -> None:
    from graft.config import plans
    from graft.config.settings import TrainConfig
    from graft.config.strategies import plan_head

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(backbone=str(backbone), **{k: v for k, v in settings.items() if k in fields})
    phases = cfg.resolved_plan()
    rows = plans.rows(phases)
    title = f"Plan: {cfg.strategy if cfg.phases is None else 'custom'}"
    table = Table(*rows[0].keys(), title=title)
    for row in rows:
        table.add_row(*row.values())
    Console(width=max(console.width, 160)).print(table)  # a plan is wide: never truncate it
    head = plan_head(phases)
    head = cfg.head if head is None else head
    lr_note = " (lr auto: the LR finder replaces the head lr)" if cfg.lr == "auto" else ""
    _log(f"Head: {list(head) or 'linear'} hidden units, dropout {cfg.dropout:g}{lr_note}")


@app.command(context_settings=_CONTEXT)
@click.argument("data", required=False)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Start from the settings in this YAML file (e.g. an earlier run's config.yaml); "
    "flags given on the command line override them.",
)
@click.option("--backbone", "-b", default=None, help="Registry name or .keras/.h5 path.")
@click.option(
    "--out",
    "-o",
    default=None,
    type=click.Path(path_type=Path),
    help="Run folder for model and reports.",
)
@click.option(
    "--resume",
    default=None,
    type=click.Path(path_type=Path),
    help="Continue an interrupted run from its folder's last checkpoint.",
)
@click.option(
    "--deterministic", is_flag=True, help="TensorFlow op determinism: same seed, same weights."
)
@click.option(
    "--distribute",
    type=click.Choice(["none", "mirrored", "multi-worker"]),
    default="none",
    show_default=True,
    help="tf.distribute strategy (multi-worker reads TF_CONFIG).",
)
@click.option(
    "--devices",
    type=int,
    default=0,
    show_default=True,
    help="Split the CPU into N logical devices (for --distribute mirrored without GPUs).",
)
@click.option(
    "--weights",
    default=None,
    help="imagenet | none | PATH (default: imagenet, or a model file's own weights).",
)
@click.option("--cut", default=None, help="Cut a model file at this layer (drop its head).")
@click.option(
    "--preprocess",
    default=None,
    help="none | unit | symmetric | caffe | torch (default: the backbone's own).",
)
@click.option("--alpha", type=float, default=None, help="Width multiplier for MobileNets.")
@click.option(
    "--strategy",
    default="hybrid",
    show_default=True,
    help="feature | finetune | hybrid | gradual | lp-ft | auto (searched, see --budget-trials).",
)
@click.option(
    "--epochs",
    type=int,
    default=10,
    show_default=True,
    help="Epochs of the first phase (the head phase, or finetune's only phase).",
)
@click.option(
    "--finetune-epochs",
    type=int,
    default=10,
    show_default=True,
    help="Epochs of hybrid's fine-tuning phase.",
)
@click.option(
    "--unfreeze",
    default="blocks:2",
    show_default=True,
    help="Backbone layers to fine-tune: all | blocks:N | layers:N | from:LAYER.",
)
@click.option(
    "--lr",
    callback=lambda ctx, param, value: _lr(value),
    default="1e-3",
    show_default=True,
    help="Learning rate of the new head; 'auto' runs the LR finder first.",
)
@click.option(
    "--finetune-lr",
    type=float,
    default=1e-5,
    show_default=True,
    help="Learning rate of the unfrozen backbone.",
)
@click.option("--train-bn", is_flag=True, help="Let BatchNormalization train when unfrozen.")
@click.option(
    "--optimizer", default="adam", show_default=True, help="adam | adamw | sgd | rmsprop | nadam."
)
@click.option(
    "--head",
    default="128",
    show_default=True,
    help="Hidden units of the head, comma-separated; '' for a linear head.",
)
@click.option(
    "--dropout", type=float, default=0.2, show_default=True, help="Dropout before the output layer."
)
@click.option("--image-size", type=int, default=None, help="Input side in pixels.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per batch.")
@click.option("--val", default=None, help="Validation folder or .csv (instead of --val-split).")
@click.option("--test", default=None, help="Test folder or .csv, evaluated once at the end.")
@click.option(
    "--val-split",
    type=float,
    default=0.2,
    show_default=True,
    help="Fraction of DATA held out for validation (stratified).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--cache/--no-cache",
    default=True,
    show_default=True,
    help="Train frozen-backbone phases on cached backbone features.",
)
@click.option(
    "--cache-dir",
    default=None,
    help="Feature cache folder (default: ~/.cache/keras-graft/features).",
)
@click.option(
    "--cache-views",
    type=int,
    default=0,
    show_default=True,
    help="With --augment: cache K augmented views per image (0: no cache, run the backbone).",
)
@click.option(
    "--jit",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="XLA compilation (auto: Keras's choice; off on CPU).",
)
@click.option(
    "--precision",
    type=click.Choice(["float32", "mixed"]),
    default="float32",
    show_default=True,
    help="mixed: float16 on GPU, bfloat16 on CPU; float32 output.",
)
@click.option(
    "--augment",
    default="none",
    show_default=True,
    help="Training-batch augmentation: none | light | standard.",
)
@click.option(
    "--class-weight",
    default="none",
    show_default=True,
    help="none | auto (balanced weights for imbalanced classes).",
)
@_min_size_option
@click.option("--strict", is_flag=True, help="Fail on any data-check problem instead of skipping.")
@click.option("--overwrite", is_flag=True, help="Reuse a non-empty run folder.")
@click.option("--unsafe", is_flag=True, help="Allow model files with Lambda layers (runs code).")
@click.option(
    "--tensorboard", is_flag=True, help="Write TensorBoard logs under RUN_DIR/tensorboard."
)
@click.option(
    "--source-eval",
    default=None,
    help="Labelled data of the backbone's original task: source accuracy before/after.",
)
@click.option(
    "--source-model",
    default=None,
    help="The original classifier for --source-eval (default: the --backbone file).",
)
@click.option(
    "--budget-trials",
    type=int,
    default=None,
    help="--strategy auto: number of search trials (default 4).",
)
@_strategy_options
@click.pass_context
def train(
    ctx,
    data,
    config_file,
    backbone,
    out,
    resume,
    val,
    test,
    overwrite,
    unsafe,
    head,
    tensorboard,
    plan_file,
    print_plan,
    **settings,
):
    """Train a classifier on DATA (a folder of class subfolders, or a path,label .csv).

    An interrupted run (Ctrl-C, SIGTERM, a kill) continues with --resume RUN_DIR."""
    from graft import api

    if resume is not None:
        run = api.train(resume=resume, log=_log, verbose=_fit_verbosity())
        _log(f"Done in {run.metrics['seconds']:.1f} s: saved to {run.run_dir}/")
        return
    settings["backbone"], head = backbone, _units(head)
    if config_file is not None:
        settings, head = _with_config_file(ctx, config_file, settings, head)
    backbone = settings.pop("backbone")
    if plan_file is not None:
        settings["phases"] = _load_plan(plan_file)
    if print_plan:
        if not backbone:
            raise GraftError("Missing --backbone.", hint="pass --backbone NAME or --config FILE.")
        _print_plan(backbone, head=head, **settings)
        return
    if data is None or not backbone or out is None:
        raise GraftError(
            "train needs DATA, --backbone and --out.",
            hint="or --config FILE for the settings, or --resume RUN_DIR to continue a run.",
        )
    run = api.train(
        data,
        backbone,
        out,
        val=val,
        test=test,
        overwrite=overwrite,
        log=_log,
        verbose=_fit_verbosity(),
        safe_mode=not unsafe,
        tensorboard=tensorboard,
        head=head,
        **settings,
    )
    acc = run.metrics.get("val_accuracy")
    summary = f"val_accuracy {acc:.4f}; " if acc is not None else ""
    if "test_accuracy" in run.metrics:
        summary += f"test_accuracy {run.metrics['test_accuracy']:.4f}; "
    _log(f"Done in {run.metrics['seconds']:.1f} s: {summary}saved to {run.run_dir}/")
    _log(f"Report: {run.run_dir / 'report.html'}")


# Flags whose explicit use means "build the plan from the flags", not from the file's phases.
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


def _with_config_file(ctx, path: Path, settings: dict, head: tuple) -> tuple[dict, tuple]:
    """Settings from a TrainConfig YAML file, overridden by flags given explicitly."""
    from click.core import ParameterSource

    from graft.config.settings import read_settings

    loaded = read_settings(path)
    explicit = {
        name
        for name in [*settings, "head"]
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
    }
    merged = dict(settings)
    for key, value in loaded.items():
        if key == "head" and "head" not in explicit:
            head = tuple(value)
        elif key == "phases":
            if not explicit & _PLAN_FLAGS:
                merged["phases"] = value
        elif key in merged and key not in explicit:
            merged[key] = value
    return merged, head


def _units(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise GraftError(f"--head must be comma-separated integers, got {text!r}.") from None


@app.command("lr-find", context_settings=_CONTEXT)
@click.argument("data")
@click.option("--backbone", "-b", required=True, help="Registry name or .keras/.h5 path.")
@click.option(
    "--out", "-o", required=True, type=click.Path(path_type=Path), help="Folder for CSV + PNG."
)
@click.option("--weights", default=None, help="imagenet | none | PATH.")
@click.option("--cut", default=None, help="Cut a model file at this layer.")
@click.option("--preprocess", default=None, help="Preprocessing mode (default: the backbone's).")
@click.option("--alpha", type=float, default=None, help="Width multiplier for MobileNets.")
@click.option("--image-size", type=int, default=None, help="Input side in pixels.")
@click.option("--strategy", default="hybrid", show_default=True, help="Strategy of the plan.")
@click.option("--unfreeze", default="blocks:2", show_default=True, help="Backbone to fine-tune.")
@click.option("--optimizer", default="adam", show_default=True, help="Optimizer name.")
@click.option("--head", default="128", show_default=True, help="Hidden units of the head.")
@click.option("--dropout", type=float, default=0.2, show_default=True, help="Head dropout.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--plan", "plan_file", default=None, help="A YAML list of phases.")
@click.option("--lr-mult", type=float, default=None, help="Discriminative-rate factor.")
@click.option("--layer-decay", type=float, default=None, help="Layer-wise decay factor.")
@click.option("--phase", type=int, default=1, show_default=True, help="Phase to sweep (1-based).")
@click.option("--start-lr", type=float, default=1e-7, show_default=True, help="First LR.")
@click.option("--end-lr", type=float, default=10.0, show_default=True, help="Last LR.")
@click.option("--steps", type=int, default=100, show_default=True, help="Batches in the sweep.")
@click.option("--unsafe", is_flag=True, help="Allow model files with Lambda layers (runs code).")
def lr_find(data, backbone, out, head, plan_file, unsafe, phase, start_lr, end_lr, steps, **kw):
    """Sweep the learning rate on DATA, plot loss vs LR and suggest a value (valley rule)."""
    from graft import api

    if plan_file is not None:
        kw["phases"] = _load_plan(plan_file)
    if not 0 < start_lr < end_lr or steps < 2:
        raise GraftError("Need 0 < --start-lr < --end-lr and --steps of at least 2.")
    found = api.lr_find(
        data,
        backbone,
        out,
        phase=phase,
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
        log=_log,
        safe_mode=not unsafe,
        head=_units(head),
        **kw,
    )
    _log(f"Swept {len(found.lrs)} steps from {found.start_lr:g} to {found.lrs[-1]:.3g}")
    _log(f"Loss vs LR: {out / 'lr_find.png'}; values: {out / 'lr_find.csv'}")
    _log(f"Suggested lr (valley): {found.suggestion:.3g}")


@app.command(context_settings=_CONTEXT)
@click.argument("data")
@click.option(
    "--strategies",
    default="feature,finetune,hybrid",
    show_default=True,
    help="Comma-separated strategies (any of graft's, plus scratch).",
)
def compare(data, strategies, out, val, test, overwrite, unsafe, head, **settings):
    """Train several strategies on DATA with the same split and seed; compare them.

    Takes the options of 'graft train' (shared by every run); runs go to OUT/<strategy>.
    """
    import dataclasses

    from graft.api import compare as compare_mod
    from graft.config.settings import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in [k for k in settings if k not in fields]:
        if settings.pop(name) not in (None, False, ()):
            raise GraftError(f"--{name.replace('_', '-')} is not supported by graft compare.")
    rows = compare_mod.compare(
        data,
        out=out,
        strategies=strategies,
        val=val,
        test=test,
        overwrite=overwrite,
        log=_log,
        verbose=_fit_verbosity(),
        safe_mode=not unsafe,
        head=_units(head),
        **settings,
    )
    table = Table(*compare_mod.COLUMNS)
    for r in rows:
        table.add_row(*(compare_mod.cell(r.get(c), c) for c in compare_mod.COLUMNS))
    console.print(table)
    _log(f"Comparison: {out / compare_mod.CSV_FILE}, .md and {compare_mod.PLOT_FILE}")


# Every 'graft train' option that configures a run is shared by the compared runs.
_NOT_FOR_COMPARE = {"data", "strategy", "tensorboard", "source_eval", "source_model"}
_NOT_FOR_COMPARE |= {"budget_trials"}
compare.params.extend(
    p for p in train.params if p.name not in _NOT_FOR_COMPARE | {q.name for q in compare.params}
)


@app.command(context_settings=_CONTEXT)
@click.argument("model")
@click.argument("data")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per batch.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--unsafe", is_flag=True, help="Allow a model file with Lambda layers (runs code).")
def evaluate(model, data, batch_size, as_json, unsafe):
    """Accuracy, loss, top-k, per-class P/R/F1, confusion and calibration of MODEL on DATA."""
    from graft import api
    from graft.reporting.evaluation import summary_line

    result = api.evaluate(model, data, batch_size=batch_size, safe_mode=not unsafe)
    if as_json:
        print(json.dumps(result))
        return
    skipped = result.get("skipped")
    _log(summary_line(result) + (f" ({skipped} skipped by the data check)" if skipped else ""))
    per_class = result.get("per_class") or result.get("per_label") or {}
    table = Table("class", "precision", "recall", "F1", "support")
    for name, v in per_class.items():
        table.add_row(
            name, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"])
        )
    console.print(table)


@app.command(context_settings=_CONTEXT)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--data", default=None, help="Re-evaluate on this labelled folder first.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per batch.")
def report(run_dir, data, batch_size):
    """(Re)generate RUN_DIR/report.html, its plots and MODEL_CARD.md."""
    from graft.reporting import report as report_mod

    path = report_mod.regenerate(run_dir, data=data, batch_size=batch_size)
    _log(f"Report: {path}")
    _log(f"Model card: {path.parent / report_mod.MODEL_CARD_FILE}")


@app.command(context_settings=_CONTEXT)
@click.argument("model")
@click.argument("images", nargs=-1, required=True)
@click.option("--top-k", type=int, default=1, show_default=True, help="Classes per image.")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option("--out", "-o", default=None, help="Output file (default: stdout).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per batch.")
@click.option("--unsafe", is_flag=True, help="Allow a model file with Lambda layers (runs code).")
def predict(model, images, top_k, fmt, out, batch_size, unsafe):
    """Predict the classes of IMAGES (files or folders) with MODEL (a run folder or .keras)."""
    from graft.reporting import predict as predict_mod

    def skipped(item):
        print(f"graft: skipped {item.path}: {item.reason}", file=sys.stderr)

    summary = predict_mod.predict_to_file(
        model,
        images,
        out,
        fmt=fmt,
        top_k=top_k,
        batch_size=batch_size,
        on_skip=skipped,
        safe_mode=not unsafe,
    )
    where = f" to {out}" if out not in (None, "-") else ""
    print(
        f"graft: predicted {summary.predicted} image(s){where}; "
        f"skipped {len(summary.skipped)} unreadable file(s)",
        file=sys.stderr,
    )


@app.command(context_settings=_CONTEXT)
@click.argument("model")
@click.option(
    "--format", "fmt", type=click.Choice(["keras", "savedmodel", "tflite"]), required=True
)
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Output path.")
@click.option(
    "--quantize",
    type=click.Choice(["none", "dynamic", "int8"]),
    default="none",
    show_default=True,
    help="TFLite quantization.",
)
@click.option("--calibration", default=None, help="Representative images (int8; the check).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def export(model, fmt, out, quantize, calibration, overwrite):
    """Export MODEL (a run folder or .keras) and check it against the Keras model."""
    from graft.reporting import export as export_mod

    result = export_mod.export(
        model, fmt, out, quantize=quantize, calibration=calibration, overwrite=overwrite
    )
    _log(f"Exported {fmt} to {result.path}")
    _log(result.summary_line())


@app.command(context_settings=_CONTEXT)
def backbones():
    """List the architectures graft knows by name."""
    from graft.core.backbones import REGISTRY, block_count

    table = Table("name", "input size", "min size", "preprocess", "blocks")
    for spec in REGISTRY.values():
        table.add_row(
            spec.name,
            str(spec.default_size),
            str(spec.min_size),
            spec.preprocess,
            str(block_count(spec.name)),
        )
    console.print(table)


@app.group(context_settings=_CONTEXT)
def data():
    """Inspect datasets."""


@data.command("check", context_settings=_CONTEXT)
@click.argument("data_path", metavar="DATA")
@click.option("--val", default=None, help="Validation folder or .csv to check with DATA.")
@click.option("--test", default=None, help="Test folder or .csv to check with DATA.")
@_min_size_option
@click.option("--strict", is_flag=True, help="Exit 2 on any problem (converted images aside).")
def data_check(data_path, val, test, min_size, strict):
    """Check every file of DATA once: unreadable, tiny, duplicate, leaked, ... images."""
    from graft import api

    report = api.check_data(data_path, val=val, test=test, min_size=min_size)
    for line in report.lines():
        _log(line)
    report.raise_if_strict(strict)


@app.command(context_settings=_CONTEXT)
@click.argument("backbone")
@click.option("--image-size", type=int, default=None, help="Input side in pixels.")
@click.option("--alpha", type=float, default=None, help="Width multiplier for MobileNets.")
@click.option("--cut", default=None, help="Cut a model file at this layer.")
@click.option("--layers", is_flag=True, help="List every layer of every block.")
def inspect(backbone, image_size, alpha, cut, layers):
    """Show a backbone's blocks, layers, parameters, preprocessing and input size."""
    from graft.core.backbones import is_model_path, resolve

    # The structure does not depend on the weights: never download them to inspect.
    bb = resolve(
        backbone,
        weights=None if is_model_path(backbone) else "none",
        image_size=image_size,
        alpha=alpha,
        cut=cut,
    )
    info = bb.describe()
    _log(
        f"{info['source']}: input {bb.image_size[0]}x{bb.image_size[1]}x{bb.channels}, "
        f"preprocess {bb.preprocess}, {info['params']:,} params, {len(bb.blocks)} blocks"
    )
    table = Table("#", "block", "layers", "params", "first layer", "last layer")
    for i, block in enumerate(bb.blocks, start=1):
        table.add_row(
            str(i),
            block.name,
            str(len(block.layers)),
            f"{block.param_count:,}",
            block.layers[0].name,
            block.layers[-1].name,
        )
    console.print(table)
    if layers:
        for block in bb.blocks:
            _log(f"{block.name}: " + ", ".join(layer.name for layer in block.layers))


@app.command(context_settings=_CONTEXT)
@click.option(
    "--quick", is_flag=True, help="Only 2 labels per class, fewer epochs (under a minute)."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("graft-demo"),
    show_default=True,
    help="Folder for data, runs and results.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
def demo(quick, out, seed):
    """Transfer learning on scikit-learn's digits: 0-4 pre-train, 5-9 with few labels."""
    from graft.api import demo as demo_mod

    _log("graft demo: pre-trained on digits 0-4, grafted onto digits 5-9 with few labels each")
    rows = demo_mod.run(
        out,
        budgets=(2,) if quick else (2, 10),
        seed=seed,
        log=_log,
        epochs_scale=0.5 if quick else 1.0,
    )
    table = Table("labels/class", "strategy", "trainable params", "test accuracy", "seconds")
    for r in rows:
        table.add_row(
            str(r["labels_per_class"]),
            r["strategy"],
            f"{r['trainable_params']:,}",
            f"{r['test_accuracy']:.3f}",
            f"{r['seconds']:.1f}",
        )
    console.print(table)
    _log(f"Results: {out / 'results.md'}; one run folder per row under {out}/")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run a command, turn errors into one line and an exit code."""
    try:
        code = app.main(args=argv, prog_name="graft", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except GraftError as exc:
        if _state["debug"]:
            raise
        print(f"graft: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("graft: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment failure: one line unless --debug
        if _state["debug"]:
            raise
        text = str(exc).strip().splitlines()
        print(
            f"graft: error: {type(exc).__name__}: {text[0] if text else ''} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def run() -> None:
    """The ``graft`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()

"""The ``graft`` command line: parse flags, call the library, print results.

Nothing here decides anything about training; every command is a few lines over
:mod:`graft.api`. Errors a user can cause print one line on stderr and exit 2; a
failure while working exits 1; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from graft import _quiet
from graft.errors import GraftError

app = typer.Typer(
    name="graft",
    help="Graft a pre-trained Keras model into your own classifier: feature extraction, "
    "fine-tuning and hybrid, done right.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console()
_state = {"debug": False, "verbose": False}


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show TensorFlow's own logs."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
):
    _state.update(debug=debug, verbose=verbose)
    _quiet.import_backend(verbose)


def _fit_verbosity():
    return 1 if sys.stdout.isatty() else 2


def _log(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


@app.command()
def train(
    data: str = typer.Argument(..., help="Folder with one subfolder of images per class."),
    backbone: str = typer.Option(..., "--backbone", "-b", help="Registry name or .keras/.h5 path."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder for model and reports."),
    weights: Optional[str] = typer.Option(
        None, help="imagenet | none | PATH (default: imagenet, or the file's own weights)."
    ),
    cut: Optional[str] = typer.Option(None, help="Cut a model file at this layer (drop its head)."),
    preprocess: Optional[str] = typer.Option(
        None, help="none|unit|symmetric|caffe|torch (default: the backbone's own)."
    ),
    alpha: Optional[float] = typer.Option(None, help="Width multiplier for MobileNets."),
    strategy: str = typer.Option("hybrid", help="feature | finetune | hybrid."),
    epochs: int = typer.Option(10, help="Epochs of the first phase (the head phase)."),
    finetune_epochs: int = typer.Option(10, help="Epochs of hybrid's fine-tuning phase."),
    unfreeze: str = typer.Option(
        "blocks:2", help="Backbone layers to fine-tune: all | blocks:N | layers:N | from:LAYER."
    ),
    lr: float = typer.Option(1e-3, help="Learning rate of the new head."),
    finetune_lr: float = typer.Option(1e-5, help="Learning rate of the unfrozen backbone."),
    train_bn: bool = typer.Option(False, help="Let BatchNormalization train when unfrozen."),
    optimizer: str = typer.Option("adam", help="adam | adamw | sgd | rmsprop | nadam."),
    head: str = typer.Option("128", help="Hidden units of the head, comma-separated; '' = linear."),
    dropout: float = typer.Option(0.2, help="Dropout before the output layer."),
    image_size: Optional[int] = typer.Option(None, help="Input side in pixels."),
    batch_size: int = typer.Option(32, help="Images per batch."),
    val: Optional[str] = typer.Option(None, help="Validation folder (instead of --val-split)."),
    val_split: float = typer.Option(0.2, help="Fraction of DATA held out for validation."),
    seed: int = typer.Option(0, help="Random seed."),
    overwrite: bool = typer.Option(False, help="Reuse a non-empty run folder."),
    unsafe: bool = typer.Option(False, help="Allow model files with Lambda layers (runs code)."),
):
    """Train a classifier on DATA with a grafted backbone."""
    from graft import api

    run = api.train(
        data, backbone, out, val=val, overwrite=overwrite, log=_log, verbose=_fit_verbosity(),
        safe_mode=not unsafe, weights=weights, cut=cut, preprocess=preprocess, alpha=alpha,
        strategy=strategy, epochs=epochs, finetune_epochs=finetune_epochs, unfreeze=unfreeze,
        lr=lr, finetune_lr=finetune_lr, train_bn=train_bn, optimizer=optimizer,
        head=_units(head), dropout=dropout, image_size=image_size, batch_size=batch_size,
        val_split=val_split, seed=seed,
    )
    acc = run.metrics.get("val_accuracy")
    summary = f"val_accuracy {acc:.4f}; " if acc is not None else ""
    _log(f"Done in {run.metrics['seconds']:.1f} s: {summary}saved to {run.run_dir}/")


def _units(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise GraftError(f"--head must be comma-separated integers, got {text!r}.") from None


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="Run folder or .keras file."),
    data: str = typer.Argument(..., help="Folder with one subfolder of images per class."),
    batch_size: int = typer.Option(32, help="Images per batch."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Accuracy and loss of a trained model on labelled images."""
    from graft import api

    result = api.evaluate(model, data, batch_size=batch_size)
    if as_json:
        print(json.dumps(result))
    else:
        _log(f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
             f"({result['images']} images)")


@app.command()
def backbones():
    """List the architectures graft knows by name."""
    from graft.backbones import REGISTRY, block_count

    table = Table("name", "input size", "min size", "preprocess", "blocks")
    for spec in REGISTRY.values():
        table.add_row(spec.name, str(spec.default_size), str(spec.min_size), spec.preprocess,
                      str(block_count(spec.name)))
    console.print(table)


@app.command()
def inspect(
    backbone: str = typer.Argument(..., help="Registry name or .keras/.h5 path."),
    image_size: Optional[int] = typer.Option(None, help="Input side in pixels."),
    alpha: Optional[float] = typer.Option(None, help="Width multiplier for MobileNets."),
    cut: Optional[str] = typer.Option(None, help="Cut a model file at this layer."),
    layers: bool = typer.Option(False, "--layers", help="List every layer of every block."),
):
    """Show a backbone's blocks, layers, parameters, preprocessing and input size."""
    from graft.backbones import resolve

    bb = resolve(backbone, weights="none" if "/" not in backbone and not backbone.endswith(
        (".keras", ".h5")) else None, image_size=image_size, alpha=alpha, cut=cut)
    info = bb.describe()
    _log(f"{info['source']}: input {bb.image_size[0]}x{bb.image_size[1]}x{bb.channels}, "
         f"preprocess {bb.preprocess}, {info['params']:,} params, {len(bb.blocks)} blocks")
    table = Table("#", "block", "layers", "params", "first layer", "last layer")
    for i, block in enumerate(bb.blocks, start=1):
        table.add_row(str(i), block.name, str(len(block.layers)), f"{block.param_count:,}",
                      block.layers[0].name, block.layers[-1].name)
    console.print(table)
    if layers:
        for block in bb.blocks:
            _log(f"{block.name}: " + ", ".join(layer.name for layer in block.layers))


@app.command()
def demo(
    quick: bool = typer.Option(False, help="One label budget, fewer epochs (under a minute)."),
    out: Path = typer.Option(Path("graft-demo"), help="Folder for data, runs and results."),
    seed: int = typer.Option(0, help="Random seed."),
):
    """Transfer learning on scikit-learn's digits: 0-4 pre-train, 5-9 with few labels."""
    from graft import demo as demo_mod

    _log("graft demo: pre-trained on digits 0-4, grafted onto digits 5-9 with few labels each")
    rows = demo_mod.run(
        out, budgets=(2,) if quick else (2, 10), seed=seed, log=_log,
        epochs_scale=0.5 if quick else 1.0,
    )
    table = Table("labels/class", "strategy", "trainable params", "test accuracy", "seconds")
    for r in rows:
        table.add_row(str(r["labels_per_class"]), r["strategy"], f"{r['trainable_params']:,}",
                      f"{r['test_accuracy']:.3f}", f"{r['seconds']:.1f}")
    console.print(table)
    _log(f"Results: {out / 'results.md'}; one run folder per row under {out}/")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run a command, turn errors into one line and an exit code."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="graft", standalone_mode=False)
        return 0
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
        print(f"graft: error: {type(exc).__name__}: {text[0] if text else ''} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return 1


def run() -> None:
    """The ``graft`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()

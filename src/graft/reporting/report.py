"""The run report: one self-contained ``report.html`` and a ``MODEL_CARD.md`` per run.

Everything is read back from the run folder (``config.yaml``, ``metrics.json``,
``history.csv``, ``labels.json``, ``status.json``, ``plots/*.png``), so ``graft report
RUN_DIR`` can regenerate both files at any time (a run that did not complete says so).
The HTML has no scripts and no external resources: the plots are embedded as base64 PNG,
so it opens offline, from e-mail or a CI artifact.

:func:`finish_run` is what :func:`graft.train` calls at the end of a run: evaluate on the
validation split (and the test split, if any), save the numbers in ``metrics.json``, draw
the plots, write the report and the model card.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from graft.data.adapter import labelled_batches
from graft.errors import GraftError
from graft.reporting import evaluation, gallery, plots, provenance, scores, transfer_plot
from graft.reporting.model_card import write_model_card
from graft.reporting.text import fmt as _fmt
from graft.runs import files as runs
from graft.runs import metrics as run_metrics
from graft.runs import model_io
from graft.runs import status as run_status
from graft.runs.layout import EXPORTS_FILE, MODEL_CARD_FILE, REPORT_FILE  # noqa: F401

PLOT_TITLES = {
    plots.CURVES: "Training curves",
    plots.CONFUSION: "Confusion matrix",
    plots.F1: "Per-class F1",
    plots.ERRORS: "Most confidently wrong predictions",
    plots.RELIABILITY: "Reliability diagram",
    transfer_plot.CURVE: "Transferability curve: probe accuracy against depth",
}
#: The report's sections: ``(anchor, title)``, in order (the contents bar links them).
SECTIONS = (
    ("data", "Data"),
    ("settings", "Settings graft chose"),
    ("transfer", "Which layer transfers best"),
    ("plan", "Plan of phases"),
    ("curves", "Training curves"),
    ("metrics", "Metrics"),
    ("errors", "Worst errors"),
    ("calibration", "Calibration"),
    ("drift", "Feature drift"),
    ("timing", "Timing"),
    ("reproduce", "Reproduce"),
    ("config", "Configuration"),
)
#: Linear CKA thresholds for the drift sentence: ``(at least, what it means)``.
CKA_READINGS = (
    (0.99, "the backbone's features are practically unchanged"),
    (0.9, "the features changed little: the pre-trained representation is kept"),
    (
        0.7,
        "the features changed moderately: fine-tuning reshaped them but kept most of "
        "their structure",
    ),
    (
        0.0,
        "the features changed a lot: the backbone now represents images differently "
        "from its pre-training (check the source task, if measured, for forgetting)",
    ),
)


@dataclass(frozen=True)
class Split:
    """Labelled batches to evaluate, and how to name and show them."""

    batches: Iterable
    #: The file of every image, in batch order (names the worst errors); ``None``: in memory.
    paths: list[str] | None = None
    #: The split's name, recorded with the numbers.
    name: str = "validation"
    #: What predicts on ``batches`` when they are not images (cached features: the head
    #: alone, which evaluates them instead of the run's model); ``None``: the run's model.
    #: The test split is always raw images for the run's model.
    model: object = None
    #: The image at an index, for thumbnails when ``batches`` are not images (see
    #: :func:`graft.reporting.evaluation.evaluate_model`).
    pixels: Callable | None = None
    #: The split's :class:`graft.reporting.evaluation.Evaluation` when its predictions were
    #: already made (the test split's, for the run's test scores; the linear probe's
    #: out-of-fold ones for a cross-validated run): not predicted again.
    evaluated: object = None


@dataclass(frozen=True)
class ReportInputs:
    """What :func:`finish_run` reports on: the trained model and what to evaluate it on."""

    model: object
    #: Class names in output order.
    classes: list[str]
    #: The run's history rows.
    history: list[dict]
    #: Evaluated, and shown in the report (``None``: only curves, report and card).
    validation: Split | None = None
    #: The test split: its worst errors are shown too.
    test: Split | None = None
    #: Image counts (``train``, ``val``, ``per_class``, ``skipped``...), saved as
    #: ``metrics.json``'s ``"data"``.
    data_summary: dict | None = None
    #: Receives one line with the headline numbers.
    log: Callable[[str], None] | None = None
    #: A :class:`graft.reporting.plot_worker.PlotWorker` (plots drawn there).
    worker: object = None


def finish_run(run_dir: str | os.PathLike, inputs: ReportInputs) -> dict | None:
    """Evaluate a freshly trained run and write its metrics, plots, report and model card.

    Args:
        run_dir: The run folder (already holding ``metrics.json`` and friends).
        inputs: The model, its classes and history, and the splits to evaluate.

    Returns:
        The evaluation metrics (also in ``metrics.json`` under ``"evaluation"``), or ``None``.
    """
    run_dir = Path(run_dir)
    classes = inputs.classes
    sections = {"data": inputs.data_summary} if inputs.data_summary else {}
    result = None
    worst = None
    val = inputs.validation
    if val is not None:
        result, worst = gallery.evaluate_split(
            run_dir,
            inputs.model if val.model is None else val.model,
            val.batches,
            classes,
            val.name,
            val.paths,
            pixels=val.pixels,
            evaluated=val.evaluated,
        )
        sections["evaluation"] = result
        if inputs.log is not None:
            inputs.log(f"Evaluation on the {val.name} split: {evaluation.summary_line(result)}")
    test = inputs.test
    if test is not None:
        sections[gallery.TEST_SECTION], _ = gallery.evaluate_split(
            run_dir,
            inputs.model,
            test.batches,
            classes,
            "test",
            test.paths,
            gallery.TEST_PREFIX,
            evaluated=test.evaluated,
        )
    metrics = run_metrics.record(run_dir, sections)
    plots.write_all(
        run_dir, inputs.history, metrics.get("evaluation"), classes, worst, inputs.worker
    )
    write_report(run_dir)
    write_model_card(run_dir)
    return result


def evaluate_early(run_dir: str | os.PathLike, inputs: ReportInputs) -> ReportInputs:
    """The validation split predicted now, and its plots queued in the plot worker, so
    that they are drawn while the run saves its files; returns ``inputs`` with that
    evaluation, which :func:`finish_run` then uses (nothing is predicted twice). Without
    a worker or a split to predict, ``inputs`` as they are."""
    val = inputs.validation
    if inputs.worker is None or val is None or val.evaluated is not None:
        return inputs
    model = inputs.model if val.model is None else val.model
    ev = evaluation.evaluate_model(
        model, val.batches, inputs.classes, paths=val.paths, pixels=val.pixels
    )
    result = {"split": val.name, **ev.as_dict()}
    jobs = plots.plot_jobs(run_dir, inputs.history, result, inputs.classes, ev.worst)
    plots.submit_all(inputs.worker, jobs)
    return dataclasses.replace(inputs, validation=dataclasses.replace(val, evaluated=ev))


def regenerate(
    run_dir: str | os.PathLike, data=None, batch_size: int = 32, safe_mode: bool = True
) -> Path:
    """Rebuild plots, ``report.html`` and ``MODEL_CARD.md`` of a run folder.

    Args:
        run_dir: A run folder written by ``graft train``.
        data: Optional labelled data (folder of class subfolders) to evaluate the run's
            model on; its numbers replace the ``"evaluation"`` in ``metrics.json``.
        batch_size: Images per batch for the evaluation.
        safe_mode: Refuse model files whose loading could run code.

    Returns:
        The path of ``report.html``.
    """
    run_dir = _check_run_dir(run_dir)
    classes = runs.read_labels(run_dir)
    history = runs.read_csv(run_dir / runs.HISTORY_FILE)
    if data is not None:
        model, classes = model_io.load(run_dir, safe_mode=safe_mode)
        _, h, w, ch = model.input_shape  # read as the run did: its size, channels, min_size
        min_size = model_io.run_min_size(run_dir)
        batches, _, _, paths = labelled_batches(
            data, classes, (h, w), ch, batch_size, min_size, with_paths=True
        )
        evaluated = Split(batches, paths, name=str(data))
        finish_run(run_dir, ReportInputs(model, classes, history, validation=evaluated))
    else:
        metrics = run_metrics.read(run_dir)
        plots.write_all(run_dir, history, metrics.get("evaluation"), classes, None)
        write_report(run_dir)
        write_model_card(run_dir)
    return run_dir / REPORT_FILE


def _check_run_dir(run_dir) -> Path:
    path = Path(run_dir).expanduser()
    if not path.is_dir() or not (path / runs.METRICS_FILE).is_file():
        note = run_status.status_note(path) if path.is_dir() else None
        why = f"{run_dir} has no report yet. {note}" if note else None
        raise GraftError(
            why or f"{run_dir} is not a graft run folder (no {runs.METRICS_FILE}).",
            hint=None if note else "pass the run folder (out=DIR) of 'graft train'.",
        )
    return path


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#222;line-height:1.4}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#666;font-size:.85rem}.muted{color:#777}
.headline{display:flex;gap:1rem;flex-wrap:wrap}
.headline div{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:6px;padding:.5rem 1rem}
.headline b{display:block;font-size:1.3rem}
nav.contents{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;
padding:.4rem 0;font-size:.9rem;z-index:1}nav.contents a{margin-right:.8rem;white-space:nowrap}
pre.command{background:#f6f8fa;border:1px solid #e1e4e8;padding:.5rem;overflow-x:auto}
details summary{cursor:pointer;color:#555}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_e(_fmt(c))}</td>' if i in numeric else f"<td>{_e(_fmt(c))}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(run_dir: Path, name: str) -> str:
    path = run_dir / plots.PLOTS_DIR / name
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    title = PLOT_TITLES.get(name, name)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(title)}" '
        f'data-plot="{_e(name)}"><figcaption>{_e(title)} ({_e(plots.PLOTS_DIR + "/" + name)})'
        f"</figcaption></figure>"
    )


def render_html(run_dir: str | os.PathLike) -> str:
    """The report of a run folder as one HTML string (images embedded)."""
    run_dir = Path(run_dir)
    config = runs.read_yaml(run_dir / runs.CONFIG_FILE, {})
    metrics = run_metrics.read(run_dir)
    classes = runs.read_json(run_dir / runs.LABELS_FILE, [])
    ev = metrics.get("evaluation") or {}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>graft run report: {_e(run_dir.resolve().name)}</title>",
        f"<style>{_CSS}{gallery.CSS}</style></head><body>",
        f"<h1>graft run report: {_e(run_dir.resolve().name)}</h1>",
        f'<p class="muted">{_e(_describe_model(config))}</p>',
        (f"<p><b>{_e(note)}</b></p>" if (note := run_status.status_note(run_dir)) else ""),
        _headline(metrics, ev),
        _contents(),
        _h2("data"),
        _data_section(metrics, ev, classes),
        _h2("settings"),
        _settings_section(config, metrics),
        _h2("transfer"),
        _transfer_section(run_dir, metrics),
        _h2("plan"),
        _plan_section(metrics),
        _h2("curves"),
        _image(run_dir, plots.CURVES) or '<p class="muted">No training history.</p>',
        _h2("metrics"),
        _metrics_section(ev),
        _image(run_dir, plots.CONFUSION),
        _image(run_dir, plots.F1),
        _h2("errors"),
        gallery.errors_sections(run_dir, metrics),
        _h2("calibration"),
        _calibration_section(run_dir, ev),
        _h2("drift"),
        _drift_section(metrics),
        _h2("timing"),
        _timing_section(metrics),
        _h2("reproduce"),
        _reproduce_section(run_dir, config),
        _h2("config"),
        _config_section(config),
        f'<p class="muted">Generated by graft at {_e(time.strftime("%Y-%m-%d %H:%M:%S"))}.</p>',
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _h2(anchor: str) -> str:
    return f'<h2 id="{anchor}">{_e(dict(SECTIONS)[anchor])}</h2>'


def _transfer_section(run_dir: Path, metrics: dict) -> str:
    """``cut="auto"``: the transferability curve and the choice, in one sentence."""
    record = metrics.get("transfer")
    if not record:
        return (
            '<p class="muted">Not measured: the run used the cut it was given '
            "(<code>--cut auto</code> or <code>graft probe</code> measure every block).</p>"
        )
    key = (record["cut"], record["pool"], record.get("scaling"))
    chosen = next(
        (c for c in record.get("candidates", ()) if (c["cut"], c["pool"], c["scaling"]) == key),
        None,
    )
    score = ""
    if chosen and chosen.get("mean") is not None:
        score = f", cross-validated probe accuracy {float(chosen['mean']):.3f}"
    text = (
        f"<p>Cut at <code>{_e(record['cut'])}</code> with {_e(record['pool'])} pooling "
        f"({int(record['features'])} features{score}), chosen among "
        f"{len(record.get('candidates', ()))} candidates by {_e(record.get('rule', ''))}; "
        f"the model's own output is <code>{_e(record.get('output', ''))}</code>.</p>"
    )
    return text + _image(run_dir, transfer_plot.CURVE)


def _contents() -> str:
    """The contents bar: a link to every section."""
    links = "".join(f'<a href="#{a}">{_e(title)}</a>' for a, title in SECTIONS)
    return f'<nav class="contents">{links}</nav>'


def _settings_section(config: dict, metrics: dict) -> str:
    rows = provenance.inferred_settings(config, metrics)
    if not rows:
        return '<p class="muted">Not recorded for this run.</p>'
    intro = (
        "<p>What the run used where graft decided, and where each value came from "
        "(given: on the command line or in the config; model evidence: read from the model "
        "file; measured: on your data; registry default: the architecture's own).</p>"
    )
    return intro + _table(["setting", "value used", "from", "how"], [list(r) for r in rows])


def reproduce_command(run_dir: str | os.PathLike) -> str:
    """The command that trains this run again (the same settings, data and seed) into a
    new folder next to it."""
    import shlex

    run_dir = Path(run_dir).resolve()
    config = shlex.quote(str(run_dir / runs.CONFIG_FILE))
    again = shlex.quote(str(run_dir.with_name(run_dir.name + "-again")))
    return f"graft train --config {config} --out {again}"


def _reproduce_section(run_dir: Path, config: dict) -> str:
    if not config:
        return '<p class="muted">No config.yaml to reproduce the run from.</p>'
    return (
        "<p>This command trains the run again from its recorded settings, data and seed "
        "(DATA, --val and --test default to the run's own; flags added to it win):</p>"
        f'<pre class="command">{_e(reproduce_command(run_dir))}</pre>'
    )


def _describe_model(config: dict) -> str:
    bb = config.get("resolved_backbone") or {}
    if not config:
        return "No config.yaml found."
    source, weights = bb.get("source", config.get("backbone")), bb.get("weights", "?")
    weights = "its own weights" if str(weights) == str(source) else f"{weights} weights"
    return (
        f"Backbone {source} ({weights}, "
        f"preprocess {bb.get('preprocess', '?')}, input {bb.get('image_size', '?')}), "
        f"strategy {config.get('strategy')}, {len(config.get('classes', []))} classes."
    )


def _headline(metrics: dict, ev: dict) -> str:
    items = []
    if ev.get("task") == "multi_label":
        items += [("micro F1", ev.get("micro_f1")), ("macro F1", ev.get("macro_f1"))]
    elif ev.get("images"):
        items += [("accuracy", ev.get("accuracy")), ("macro F1", ev["macro_avg"]["f1"])]
        items += [(f"top-{k}", v) for k, v in ev.get("top_k_accuracy", {}).items()]
        items += [("ECE", ev.get("ece"))]
    items += scores.headline_items(metrics)
    items += [("epochs", metrics.get("epochs")), ("seconds", metrics.get("seconds"))]
    cells = "".join(f"<div><b>{_e(_fmt(v))}</b>{_e(k)}</div>" for k, v in items if v is not None)
    html_out = f'<div class="headline">{cells}</div>'
    if ev.get("split"):
        html_out += (
            f'<p class="muted">Evaluated on the {_e(ev["split"])} split '
            f"({_e(_fmt(ev['images']))} images).</p>"
        )
    if scores.kept_line(metrics):
        html_out += f'<p class="muted">{_e(scores.kept_line(metrics))}</p>'
    return html_out


def _data_section(metrics: dict, ev: dict, classes: list[str]) -> str:
    data = metrics.get("data") or {}
    train_counts = data.get("per_class") or {}
    support = {k: v.get("support") for k, v in (ev.get("per_class") or {}).items()}
    rows = [[name, train_counts.get(name, ""), support.get(name, "")] for name in classes]
    out = [
        f"<p>{_e(_fmt(metrics.get('train_images', data.get('train', '?'))))} training images, "
        f"{_e(_fmt(metrics.get('val_images', data.get('val', '?'))))} validation images, "
        f"{len(classes)} classes.</p>",
        _table(["class", "train images", "evaluated images"], rows, {1, 2}),
    ]
    skipped = data.get("skipped") or data.get("skipped_files")
    if skipped:
        items = skipped if isinstance(skipped, list) else [skipped]
        listed = "".join(f"<li>{_e(_fmt(s))}</li>" for s in items[:50])
        more = f"<li>... and {len(items) - 50} more</li>" if len(items) > 50 else ""
        out.append(f"<p>Skipped files ({len(items)}):</p><ul>{listed}{more}</ul>")
    else:
        out.append('<p class="muted">No files were skipped.</p>')
    return "\n".join(out)


def _plan_section(metrics: dict) -> str:
    phases = metrics.get("phases") or []
    if not phases:
        return '<p class="muted">No phases recorded.</p>'
    rows = [
        [
            i,
            p.get("name"),
            p.get("spec"),
            p.get("epochs"),
            p.get("lr"),
            p.get("backbone_lr") if p.get("backbone_lr") is not None else "",
            p.get("train_bn"),
            p.get("trainable_params"),
            p.get("frozen_params"),
            ", ".join(p.get("trainable_blocks") or []) or "none",
        ]
        for i, p in enumerate(phases, start=1)
    ]
    header = ["#", "phase", "backbone trains", "epochs", "lr", "backbone lr", "BN trains"]
    header += ["trainable params", "frozen params", "trainable blocks"]
    return _table(header, rows, {0, 3, 4, 5, 7, 8})


def _metrics_section(ev: dict) -> str:
    if not ev.get("images"):
        return '<p class="muted">No evaluation data (train with a validation split).</p>'
    if ev.get("task") == "multi_label":
        per = ev["per_label"]
        summary = _table(
            ["metric", "value"],
            [[k, ev[k]] for k in ("subset_accuracy", "hamming_loss", "micro_f1", "macro_f1")],
            {1},
        )
    else:
        per = ev["per_class"]
        rows = [["accuracy", ev["accuracy"]], ["loss", ev["loss"]]]
        rows += [[f"top-{k} accuracy", v] for k, v in ev.get("top_k_accuracy", {}).items()]
        rows += [["expected calibration error", ev["ece"]]]
        for avg in ("macro_avg", "weighted_avg"):
            rows += [[f"{avg.replace('_', ' ')} {k}", v] for k, v in ev[avg].items()]
        summary = _table(["metric", "value"], rows, {1})
    per_rows = [[n, v["precision"], v["recall"], v["f1"], v["support"]] for n, v in per.items()]
    out = [
        summary,
        _table(["class", "precision", "recall", "F1", "support"], per_rows, {1, 2, 3, 4}),
    ]
    if "confusion_matrix" in ev:
        names = list(per)
        rows = [[names[i], *row, sum(row)] for i, row in enumerate(ev["confusion_matrix"])]
        out.append("<p>Confusion matrix (rows: true class, columns: predicted class):</p>")
        out.append(
            _table(["true \\ predicted", *names, "total"], rows, set(range(1, len(names) + 2)))
        )
    return "\n".join(out)


def _calibration_section(run_dir: Path, ev: dict) -> str:
    bins = ev.get("calibration")
    if not bins:
        return '<p class="muted">Not measured.</p>'
    rows = [
        [f"{b['lower']:.2f}-{b['upper']:.2f}", b["count"], b["accuracy"], b["confidence"]]
        for b in bins
    ]
    ece = float(ev["ece"])
    reading = (
        "well calibrated: its confidence can be read as a probability"
        if ece < 0.05
        else "somewhat miscalibrated: treat its confidence as a ranking more than a probability"
        if ece < 0.15
        else "poorly calibrated: its confidence is not a probability (bars far from the diagonal)"
    )
    intro = (
        f"<p>Expected calibration error (top-1, {evaluation.ECE_BINS} bins): {ece:.4f}, the "
        f"average gap between confidence and accuracy. Below 0.05 a model is usually called "
        f"well calibrated, above 0.15 poorly: this one is {_e(reading)}.</p>"
    )
    table = _table(["confidence bin", "images", "accuracy", "mean confidence"], rows, {1, 2, 3})
    return (
        intro
        + _image(run_dir, plots.RELIABILITY)
        + f"<details><summary>The bins as numbers</summary>{table}</details>"
    )


def drift_reading(cka: float) -> str:
    """One sentence on what a linear CKA between the backbone's features before and after
    training means, with the thresholds it was read against."""
    meaning = next(text for least, text in CKA_READINGS if cka >= least)
    return (
        f"A linear CKA of {cka:.2f} compares the backbone's features of the same images before "
        f"and after training (1: the same up to rotation and scale, 0: unrelated): {meaning} "
        "(read as: 0.99 and above unchanged, 0.9 little, 0.7 moderate, below 0.7 a lot)."
    )


def _drift_section(metrics: dict) -> str:
    drift = metrics.get("feature_drift") or metrics.get("drift")
    source = metrics.get("source_task")
    extra = ""
    if isinstance(source, dict):
        extra = "<p>Source task (original head on the fine-tuned backbone):</p>" + _table(
            ["measure", "value"], [[k, v] for k, v in source.items()], {1}
        )
    if not drift:
        return '<p class="muted">Not measured for this run.</p>' + extra
    if isinstance(drift, dict):
        table = _table(["measure", "value"], [[k, v] for k, v in drift.items()], {1})
        cka = drift.get("cka")
        reading = f"<p>{_e(drift_reading(float(cka)))}</p>" if cka is not None else ""
        return reading + table + extra
    return f"<p>{_e(_fmt(drift))}</p>" + extra


def _timing_section(metrics: dict) -> str:
    rows = [[p.get("name"), p.get("epochs"), p.get("seconds")] for p in metrics.get("phases", [])]
    rows.append(["training (all phases)", metrics.get("epochs"), metrics.get("seconds")])
    ev = metrics.get("evaluation") or {}
    if "seconds" in ev:
        rows.append(["evaluation", "", ev["seconds"]])
    whole = (metrics.get("whole_run") or {}).get("seconds")
    if whole is not None:
        rows.append(["whole run until the report", "", whole])
    table = _table(["step", "epochs", "seconds"], rows, {1, 2})
    return table + (
        '<p class="muted">Training is the phases alone; the whole run adds the data check, '
        "building the model, the caches, drift and the test split.</p>"
    )


def _config_section(config: dict) -> str:
    if not config:
        return '<p class="muted">No config.yaml.</p>'
    skip = {"phases", "resolved_backbone", "classes", "versions"}
    # A setting left out (None) was decided by graft: "Settings graft chose" says how.
    decided = {row[0].replace(" ", "_") for row in provenance.inferred_settings(config, {})}
    rows = [
        [k, v if v is not None else "chosen by graft" if k in decided else "default"]
        for k, v in config.items()
        if k not in skip
    ]
    out = [
        '<p class="muted">As recorded in config.yaml; "chosen by graft" and "default": not '
        'given (see <a href="#settings">Settings graft chose</a>).</p>',
        _table(["setting", "value"], rows),
    ]
    if config.get("resolved_backbone"):
        out.append("<p>Resolved backbone:</p>")
        out.append(_table(["field", "value"], list(map(list, config["resolved_backbone"].items()))))
    if config.get("versions"):
        out.append("<p>Versions:</p>")
        out.append(_table(["package", "version"], list(map(list, config["versions"].items()))))
    return "\n".join(out)


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``RUN_DIR/report.html`` (self-contained) and return its path."""
    run_dir = Path(run_dir)
    return runs.atomic_write(run_dir / REPORT_FILE, render_html(run_dir))

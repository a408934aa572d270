"""TensorBoard logs for a run: Keras's own callback, plus the plan of phases as scalars.

``graft train --tensorboard`` (``graft.train(..., tensorboard=True)``) writes under
``RUN_DIR/tensorboard``::

    train/       epoch_loss, epoch_accuracy, epoch_learning_rate (per epoch, all phases)
    validation/  epoch_loss, epoch_accuracy
    phases/      phase/index, phase/learning_rate, phase/backbone_learning_rate

Steps are 0-based epochs counted across phases, so a run's phases follow each other on
one axis. View with ``tensorboard --logdir RUN_DIR/tensorboard``.

On TensorFlow, Keras's own ``TensorBoard`` callback and ``tf.summary`` write them. Keras's
callback needs TensorFlow, so on JAX and PyTorch :class:`EpochScalars` writes the same
scalars (the same tags, steps and directories, the same tensor-form scalar summaries as
``tf.summary.scalar``) with the ``tensorboard`` package's own pure-Python event writer
(``EventFileWriter``, the writer ``torch.utils.tensorboard`` uses, and the scalars
plugin's ``scalar_pb``), which needs no TensorFlow. Without the ``tensorboard`` package
``--tensorboard`` is refused in one line before the run folder is touched
(:func:`require`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import keras

from graft.errors import GraftError
from graft.runs.layout import TENSORBOARD_DIR
from graft.training.hooks import Hook, PhaseContext

LOG_DIR = TENSORBOARD_DIR


def log_dir(run_dir: str | os.PathLike) -> Path:
    """Where a run's TensorBoard logs go."""
    return Path(run_dir) / LOG_DIR


def require() -> None:
    """Refuse ``tensorboard=True`` in one line when the ``tensorboard`` package is missing
    (checked before the run folder is made or cleared).

    Raises:
        GraftError: The ``tensorboard`` package cannot be imported.
    """
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise GraftError(
            "tensorboard=True needs the tensorboard package, which is not installed here.",
            hint="pip install tensorboard (every keras-graft backend extra includes it), or "
            "train without --tensorboard.",
        ) from None


def on_tensorflow() -> bool:
    """Whether Keras runs on TensorFlow (Keras's own callback and ``tf.summary`` write)."""
    return keras.backend.backend() == "tensorflow"


def callback(run_dir: str | os.PathLike, histograms: bool = False):
    """The callback writing per-epoch scalars under ``RUN_DIR/tensorboard``.

    Args:
        run_dir: The run folder.
        histograms: Also write weight histograms every epoch (slower, larger logs;
            TensorFlow only).

    Returns:
        A ``keras.callbacks.TensorBoard`` on TensorFlow, an :class:`EpochScalars`
        elsewhere (use it for every phase).

    Raises:
        GraftError: The ``tensorboard`` package is not installed.
    """
    require()
    import shutil

    shutil.rmtree(log_dir(run_dir), ignore_errors=True)  # no stale logs from an overwritten run
    if not on_tensorflow():
        return EpochScalars(log_dir(run_dir))
    return keras.callbacks.TensorBoard(
        log_dir=str(log_dir(run_dir)),
        histogram_freq=1 if histograms else 0,
        write_graph=False,
        update_freq="epoch",
        profile_batch=0,
    )


class ScalarWriter:
    """Scalar summaries into one event-file folder, without TensorFlow: the
    ``tensorboard`` package's ``EventFileWriter`` with the tensor-form summaries that
    ``tf.summary.scalar`` writes (``scalar_pb``: float32, the scalars plugin's metadata)."""

    def __init__(self, folder: str | os.PathLike):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.folder))

    def scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.plugins.scalar.summary_v2 import scalar_pb

        summary = scalar_pb(tag, float(value))
        self._writer.add_event(
            event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        )

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


def learning_rates(optimizer) -> dict[str, float]:
    """The learning rates Keras's ``TensorBoard`` callback logs with each epoch:
    ``learning_rate``, or ``learning_rate_<name>`` per optimizer of a ``MultiOptimizer``."""
    if hasattr(optimizer, "inner_optimizer"):  # a LossScaleOptimizer (mixed precision)
        optimizer = optimizer.inner_optimizer
    if hasattr(optimizer, "optimizers"):
        return {
            f"learning_rate_{opt.name}": float(keras.ops.convert_to_numpy(opt.learning_rate))
            for opt in optimizer.optimizers
        }
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return {"learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate))}
    return {}


class EpochScalars(keras.callbacks.Callback):
    """What Keras's ``TensorBoard(update_freq="epoch")`` callback writes, without
    TensorFlow (see :class:`ScalarWriter`): each epoch's ``epoch_<metric>`` (and
    ``epoch_learning_rate``) in ``train/`` and ``epoch_<metric>`` of its validation in
    ``validation/``, at the run's epoch; each validation's
    ``evaluation_<metric>_vs_iterations`` in ``validation/`` at the optimizer's step.
    One event file per folder and ``fit`` (a phase), as Keras's callback writes."""

    def __init__(self, folder: str | os.PathLike):
        super().__init__()
        self.folder = Path(folder)
        self._writers: dict[str, ScalarWriter] = {}

    def _writer(self, which: str) -> ScalarWriter:
        if which not in self._writers:
            self._writers[which] = ScalarWriter(self.folder / which)
        return self._writers[which]

    def on_test_end(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None or not hasattr(optimizer, "iterations"):
            return
        step = int(keras.ops.convert_to_numpy(optimizer.iterations))
        for name, value in (logs or {}).items():
            self._writer("validation").scalar(f"evaluation_{name}_vs_iterations", value, step)

    def on_epoch_end(self, epoch, logs=None):
        if not logs:
            return
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        train.update(learning_rates(getattr(self.model, "optimizer", None)))
        for name, value in train.items():
            self._writer("train").scalar(f"epoch_{name}", value, epoch)
        for name, value in logs.items():
            if name.startswith("val_"):
                self._writer("validation").scalar(f"epoch_{name[4:]}", value, epoch)

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


class TensorBoardLogs(Hook):
    """The hook that logs every phase with one Keras TensorBoard callback (see :func:`callback`)."""

    def __init__(self, run_dir: str | os.PathLike, histograms: bool = False):
        self.run_dir = Path(run_dir)
        self.keras_callback = callback(run_dir, histograms)

    def callbacks(self, ctx: PhaseContext) -> list:
        return [self.keras_callback]


def write_phases(run_dir: str | os.PathLike, history: list[dict]) -> Path:
    """Write each epoch's phase index and learning rates as scalars (``phases/``).

    Args:
        run_dir: The run folder.
        history: The trainer's history rows (``epoch``, ``phase_index``, ``lr``,
            ``backbone_lr``).

    Returns:
        The folder written to.
    """
    folder = log_dir(run_dir) / "phases"
    if not on_tensorflow():
        return _write_phases_without_tensorflow(folder, history)
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(folder))
    with writer.as_default():
        for row in history:
            step = int(row["epoch"]) - 1
            tf.summary.scalar("phase/index", float(row["phase_index"]), step=step)
            tf.summary.scalar("phase/learning_rate", float(row["lr"]), step=step)
            if row.get("backbone_lr") is not None:
                tf.summary.scalar(
                    "phase/backbone_learning_rate", float(row["backbone_lr"]), step=step
                )
    writer.flush()
    writer.close()
    return folder


def _write_phases_without_tensorflow(folder: Path, history: list[dict]) -> Path:
    """:func:`write_phases` with :class:`ScalarWriter` (the same tags and steps)."""
    writer = ScalarWriter(folder)
    try:
        for row in history:
            step = int(row["epoch"]) - 1
            writer.scalar("phase/index", float(row["phase_index"]), step)
            writer.scalar("phase/learning_rate", float(row["lr"]), step)
            if row.get("backbone_lr") is not None:
                writer.scalar("phase/backbone_learning_rate", float(row["backbone_lr"]), step)
    finally:
        writer.close()
    return folder


def read_scalars(folder: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``folder``: ``{tag: [(step, value), ...]}``.

    Reads them with the ``tensorboard`` package's own event-file loader (pure Python, on
    every backend; every backend's extra installs it), whoever wrote them.
    """
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = value.simple_value
                elif value.HasField("tensor"):
                    number = float(tensor_util.make_ndarray(value.tensor))
                else:
                    continue
                scalars.setdefault(value.tag, []).append((int(event.step), float(number)))
    return scalars

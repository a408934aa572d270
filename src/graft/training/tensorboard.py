"""TensorBoard logs for a run: Keras's own callback, plus the plan of phases as scalars.

``graft train --tensorboard`` (``graft.train(..., tensorboard=True)``) writes under
``RUN_DIR/tensorboard``::

    train/       epoch_loss, epoch_accuracy, epoch_learning_rate (per epoch, all phases)
    validation/  epoch_loss, epoch_accuracy
    phases/      phase/index, phase/learning_rate, phase/backbone_learning_rate

Steps are 0-based epochs counted across phases, so a run's phases follow each other on
one axis. View with ``tensorboard --logdir RUN_DIR/tensorboard``.
"""

from __future__ import annotations

import os
from pathlib import Path

from graft.errors import GraftError
from graft.runs.layout import TENSORBOARD_DIR
from graft.training.hooks import Hook, PhaseContext

LOG_DIR = TENSORBOARD_DIR


def log_dir(run_dir: str | os.PathLike) -> Path:
    """Where a run's TensorBoard logs go."""
    return Path(run_dir) / LOG_DIR


def callback(run_dir: str | os.PathLike, histograms: bool = False):
    """Keras's TensorBoard callback writing per-epoch scalars under ``RUN_DIR/tensorboard``.

    Args:
        run_dir: The run folder.
        histograms: Also write weight histograms every epoch (slower, larger logs).

    Returns:
        A ``keras.callbacks.TensorBoard`` instance (use it for every phase).

    Raises:
        GraftError: The ``tensorboard`` package is not installed.
    """
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise GraftError(
            "tensorboard=True needs the tensorboard package.", hint="pip install tensorboard"
        )
    import shutil

    import keras

    shutil.rmtree(log_dir(run_dir), ignore_errors=True)  # no stale logs from an overwritten run
    return keras.callbacks.TensorBoard(
        log_dir=str(log_dir(run_dir)),
        histogram_freq=1 if histograms else 0,
        write_graph=False,
        update_freq="epoch",
        profile_batch=0,
    )


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
    import tensorflow as tf

    folder = log_dir(run_dir) / "phases"
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


def read_scalars(folder: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``folder``: ``{tag: [(step, value), ...]}``.

    Reads the files with TensorFlow only (the ``tensorboard`` package is not needed).
    """
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(folder).rglob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = value.simple_value
                elif value.HasField("tensor"):
                    number = float(tf.make_ndarray(value.tensor))
                else:
                    continue
                scalars.setdefault(value.tag, []).append((int(event.step), float(number)))
    return scalars

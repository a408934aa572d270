"""Never lose work: end-of-epoch checkpoints, resume, clean interruption and run status.

At the end of every completed epoch the trainer writes ``RUN_DIR/checkpoint/``:

* ``weights-eNNNN.npz``: every variable of the FULL model by value, in order (weights,
  BatchNormalization statistics and the dropout layers' seed-generator states). A phase
  that trains the head on cached features trains layers shared with the full model, so
  the full model is always what is saved.
* ``optimizer-eNNNN.npz``: the optimizer's variables in order (iteration counter,
  learning rate, moments). A ``MultiOptimizer`` with a Python selector cannot be
  serialised, so its state is saved by value and restored into a freshly compiled
  optimizer built on the same trainable variables.
* ``state.json`` (written last: the commit point): phase index and epoch inside it, the
  history rows so far, how many passes each shuffled dataset has made (so a resumed run
  sees the same data order), and the Python/NumPy random states.

Every file is written to a temporary name and renamed into place, and ``state.json``
only ever names complete files, so a kill at any instant leaves the previous good
checkpoint. Nothing here uses pickle: arrays are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from graft.errors import GraftError, first_line
from graft.runs import files as runs
from graft.runs.layout import CHECKPOINT_DIR, STATE_FILE, STATUS_FILE  # noqa: F401

FORMAT_VERSION = 1
_SIGNAL_CODES = {"SIGINT": 130, "SIGTERM": 143}
# Keras 3's epoch iterator (keras/src/trainers/epoch_iterator.py) makes two iterators of
# a finite dataset per completed epoch: one to run the epoch, and one made eagerly when
# it is exhausted (discarded at the next epoch). Each draws a new shuffle order, so a
# resumed run skips this many shuffles per epoch done. Under a tf.distribute strategy
# each fit also peeks at one batch first (one more iterator, see add_pass).
ITERATORS_PER_EPOCH = 2


class Interrupted(GraftError):
    """Training was stopped by Ctrl-C (exit 130) or SIGTERM (exit 143)."""

    def __init__(self, message: str, hint: str | None = None, signal_name: str = "SIGINT"):
        super().__init__(message, hint)
        self.exit_code = _SIGNAL_CODES.get(signal_name, 130)
        self.signal_name = signal_name


# --------------------------------------------------------------------------- state


@dataclass
class State:
    """A committed checkpoint (the content of ``state.json``)."""

    phase_index: int = 1
    phase_epoch: int = 0
    phase_done: bool = False
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    passes: dict = field(default_factory=lambda: {"full": 0, "cached": 0})
    weights: str | None = None
    optimizer: str | None = None
    rng: dict = field(default_factory=dict)

    def next_position(self) -> tuple[int, int]:
        """``(phase_index, epochs already done in it)`` where training continues."""
        if self.phase_done:
            return self.phase_index + 1, 0
        return self.phase_index, self.phase_epoch

    @classmethod
    def from_dict(cls, data: dict) -> State:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def load_state(run_dir: str | Path) -> State | None:
    """The last committed checkpoint of ``run_dir``, or ``None`` if there is none yet."""
    path = checkpoint_dir(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise GraftError(f"Cannot read the checkpoint {path}: {exc}") from None
    return State.from_dict(data)


def _save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{f"v{i:05d}": a for i, a in enumerate(arrays)})
    runs.atomic_write(path, buffer.getvalue())


def _load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return [data[k] for k in sorted(data.files)]


def _assign(variables, arrays, what: str, path: Path) -> None:
    if len(variables) != len(arrays) or any(
        tuple(v.shape) != a.shape for v, a in zip(variables, arrays)
    ):
        raise GraftError(
            f"The checkpoint {path} does not fit this {what} "
            f"({len(arrays)} saved arrays for {len(variables)} variables).",
            hint="resume with the same graft version and settings, or start a new run.",
        )
    for variable, value in zip(variables, arrays):
        variable.assign(value)


def restore_model(model: keras.Model, run_dir: str | Path, state: State) -> None:
    """Put the checkpoint's values into every variable of ``model`` (same architecture)."""
    path = checkpoint_dir(run_dir) / state.weights
    _assign(model.variables, _load_arrays(path), "model", path)


def restore_optimizer(target: keras.Model, run_dir: str | Path, state: State) -> None:
    """Build ``target``'s fresh optimizer on its trainable variables, then load the saved state."""
    if not state.optimizer:
        return
    path = checkpoint_dir(run_dir) / state.optimizer
    optimizer = target.optimizer
    optimizer.build(target.trainable_variables)
    _assign(optimizer.variables, _load_arrays(path), "optimizer", path)


def rng_state() -> dict:
    """Python's and NumPy's global random states (JSON, no pickle)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {
        k: int(v) if np.ndim(v) == 0 else np.asarray(v).tolist()
        for k, v in np_state["state"].items()
    }
    return {"python": [version, list(internal), gauss], "numpy": np_state}


def restore_rng(state: dict) -> None:
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        np_state = dict(state["numpy"])
        inner = dict(np_state["state"])
        inner["key"] = np.asarray(inner["key"], dtype=np.uint32)
        np_state["state"] = inner
        np.random.set_state(np_state)


def fast_forward(dataset, passes: int) -> None:
    """Advance a reshuffling ``tf.data`` pipeline by ``passes`` iterator creations.

    ``shuffle(seed=s, reshuffle_each_iteration=True)`` draws a new order each time an
    iterator is created; a resumed run makes as many iterators as the killed one had
    (one batch each is read), so its next epoch sees the same order.
    """
    for _ in range(int(passes)):
        iterator = iter(dataset)
        next(iterator, None)
        del iterator


# --------------------------------------------------------------------------- writing


class Checkpointer:
    """Writes end-of-epoch checkpoints of one run and stops cleanly on SIGINT/SIGTERM.

    Args:
        run_dir: The run folder (checkpoints go to ``run_dir/checkpoint``).
        log: Receives one line when training is interrupted.
    """

    def __init__(self, run_dir: str | Path, log=print):
        self.run_dir = Path(run_dir)
        self.log = log
        self.state = State()
        self.stop_signal: str | None = None
        self._skip_peek = False

    def __repr__(self) -> str:
        return f"Checkpointer(run_dir={str(self.run_dir)!r})"

    def resume_from(self, state: State) -> None:
        """Continue from ``state``: new epochs are appended to its history."""
        self.state = State.from_dict(dict(state.__dict__))
        # The killed run's fit already peeked at its dataset for this phase (counted).
        self._skip_peek = state.phase_epoch > 0 and not state.phase_done

    def callbacks(self, trainer, phase, index: int, target: keras.Model) -> list:
        """The per-phase Keras callback (for ``Trainer.phase_callbacks``)."""
        return [_EpochCheckpoint(self, trainer, phase, index, target)]

    def save(self, trainer, target, phase, index: int, phase_epoch: int, row: dict) -> None:
        """Commit one completed epoch: arrays first, then ``state.json`` naming them."""
        folder = checkpoint_dir(self.run_dir)
        old = self.state
        epoch = row["epoch"]
        weights = f"weights-e{epoch:04d}.npz"
        optimizer = f"optimizer-e{epoch:04d}.npz"
        _save_arrays(folder / weights, [np.asarray(v) for v in trainer.model.variables])
        _save_arrays(folder / optimizer, [np.asarray(v) for v in target.optimizer.variables])
        on_cache = target is not trainer.model
        passes = dict(old.passes)
        key = "cached" if on_cache else "full"
        passes[key] = passes.get(key, 0) + ITERATORS_PER_EPOCH
        self.state = State(
            phase_index=index,
            phase_epoch=phase_epoch,
            phase_done=False,
            epoch=epoch,
            history=[*old.history, row],
            passes=passes,
            weights=weights,
            optimizer=optimizer,
            rng=rng_state(),
        )
        self._commit()
        for stale in folder.glob("*-e*.npz"):
            if stale.name not in (weights, optimizer):
                stale.unlink(missing_ok=True)

    def add_pass(self, on_cache: bool) -> None:
        """Count an extra iterator a fit made (the symbolic-build peek under a strategy)."""
        if self._skip_peek:
            self._skip_peek = False
            return
        key = "cached" if on_cache else "full"
        self.state.passes[key] = self.state.passes.get(key, 0) + 1

    def phase_finished(self, index: int) -> None:
        """Mark phase ``index`` complete (also when stopped early) and commit."""
        if self.state.weights is None or self.state.phase_index != index:
            return
        self.state.phase_done = True
        self._commit()

    def _commit(self) -> None:
        state = dict(self.state.__dict__)
        state["version"] = FORMAT_VERSION
        state["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        runs.write_json(checkpoint_dir(self.run_dir) / STATE_FILE, state)


def history_row(phase, index: int, epoch: int, phase_epoch: int, logs: dict, seconds: float):
    """One history.csv row (the same keys as :meth:`graft.training.Trainer.fit` writes)."""
    row = {"phase": phase.name, "phase_index": index, "epoch": epoch, "phase_epoch": phase_epoch}
    row.update({k: float(v) for k, v in (logs or {}).items()})
    row["seconds"] = round(seconds, 4)
    row["lr"] = phase.lr
    row["backbone_lr"] = None if phase.backbone_frozen else (phase.backbone_lr or phase.lr)
    return row


class _EpochCheckpoint(keras.callbacks.Callback):
    """Saves after every finite epoch; turns a pending signal into :class:`Interrupted`."""

    def __init__(self, owner: Checkpointer, trainer, phase, index: int, target):
        super().__init__()
        self.owner, self.trainer, self.phase, self.index, self.target = (
            owner,
            trainer,
            phase,
            index,
            target,
        )
        self.failed = False

    def on_train_begin(self, logs=None):
        if getattr(self.target, "_distribute_strategy", None) is not None:
            self.owner.add_pass(self.target is not self.trainer.model)

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.owner.stop_signal:
            self._interrupt("during")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = logs.get("loss")
        if loss is not None and not np.isfinite(loss):
            self.failed = True
            return
        state = self.owner.state
        done = state.phase_epoch if state.phase_index == self.index and not state.phase_done else 0
        row = history_row(
            self.phase, self.index, epoch + 1, done + 1, logs, time.perf_counter() - self._start
        )
        self.owner.save(self.trainer, self.target, self.phase, self.index, done + 1, row)
        if self.owner.stop_signal:
            self._interrupt("after")

    def on_train_end(self, logs=None):
        if not self.failed and not self.owner.stop_signal:
            self.owner.phase_finished(self.index)

    def _interrupt(self, when: str):
        state = self.owner.state
        kept = (
            f"the checkpoint of epoch {state.epoch} is kept"
            if state.weights
            else "no epoch had finished, so there is no checkpoint yet"
        )
        raise Interrupted(
            f"Interrupted by {self.owner.stop_signal} {when} an epoch of phase "
            f"{self.index} '{self.phase.name}'; {kept} in {checkpoint_dir(self.owner.run_dir)}.",
            hint=f"continue with: graft train --resume {self.owner.run_dir}",
            signal_name=self.owner.stop_signal,
        )


@contextlib.contextmanager
def stop_on_signals(checkpointer: Checkpointer | None):
    """While training, SIGINT/SIGTERM ask the checkpointer to stop after the current step.

    A second Ctrl-C interrupts at once. Only installed in the main thread.
    """
    if checkpointer is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if checkpointer.stop_signal:  # second signal: stop now
            raise KeyboardInterrupt
        checkpointer.stop_signal = signal.Signals(signum).name

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --------------------------------------------------------------------------- status


def write_status(run_dir: str | Path, status: str, **details) -> Path:
    """``RUN_DIR/status.json``: ``completed``, ``running``, ``interrupted`` or ``failed``."""
    state = load_state(run_dir)
    body = {"status": status, **details, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if state is not None:
        body["last_checkpoint"] = {
            "epoch": state.epoch,
            "phase_index": state.phase_index,
            "phase_epoch": state.phase_epoch,
            "path": str(checkpoint_dir(run_dir)),
        }
    if status != "completed":
        body["resume"] = f"graft train --resume {run_dir}"
    return runs.write_json(Path(run_dir) / STATUS_FILE, body)


def saved_config(run_dir: str | Path) -> dict:
    """The ``config.yaml`` of a run folder to resume (settings, data paths, safe mode)."""
    import yaml

    path = Path(run_dir).expanduser() / runs.CONFIG_FILE
    if not path.is_file():
        raise GraftError(
            f"Cannot resume {run_dir}: it has no {runs.CONFIG_FILE}.",
            hint="pass the folder given as --out to an earlier 'graft train'.",
        )
    config = yaml.safe_load(path.read_text("utf-8")) or {}
    status = Path(run_dir) / STATUS_FILE
    if status.is_file() and json.loads(status.read_text("utf-8")).get("status") == "completed":
        raise GraftError(
            f"{run_dir} finished training already; there is nothing to resume.",
            hint="start a new run with another --out.",
        )
    return config


def describe_failure(exc: BaseException) -> tuple[str, dict]:
    """``(status, details)`` for ``status.json`` after ``exc`` ended a run."""
    if isinstance(exc, Interrupted):
        return "interrupted", {"signal": exc.signal_name, "error": exc.message}
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", {"signal": "SIGINT", "error": "interrupted"}
    return "failed", {"error": f"{type(exc).__name__}: {first_line(exc)}"}


def as_user_error(exc: BaseException, batch_size: int) -> BaseException:
    """Turn resource exhaustion into one actionable line; anything else is unchanged."""
    from graft.errors import TrainingFailed

    name = type(exc).__name__
    if name == "ResourceExhaustedError" or isinstance(exc, MemoryError):
        return TrainingFailed(
            f"Out of memory while training with --batch-size {batch_size}.",
            hint=f"try a smaller --batch-size (e.g. {max(1, batch_size // 2)}) or --image-size.",
        )
    return exc

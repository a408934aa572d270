"""Never lose work: end-of-epoch checkpoints, resume, clean interruption and run status.

At the end of every completed epoch the trainer writes ``RUN_DIR/checkpoint/``:

* ``weights-eNNNN.npz``: every variable of the FULL model by value, in order (weights,
  BatchNormalization statistics and the dropout layers' seed-generator states); after a
  phase's first epoch only those that can change (:mod:`~graft.training.snapshots`). A phase
  that trains the head on cached features trains layers shared with the full model, so
  the full model is always what is saved.
* ``optimizer-eNNNN.npz``: the optimizer's variables in order (iteration counter,
  learning rate, moments). A ``MultiOptimizer`` with a Python selector cannot be
  serialised, so its state is saved by value and restored into a freshly compiled
  optimizer built on the same trainable variables.
* ``<name>-eNNNN.npz``: the arrays of a policy's or hook's state (early stopping's best
  weights, L2-SP anchors).
* ``state.json`` (written last: the commit point): phase index and epoch inside it, the
  history rows so far, every policy's and hook's state (schedule, plateau, early
  stopping) and the Python/NumPy random states. The data order needs no state: epoch
  ``e`` of every shuffled reader follows graft's ``epoch_order(rows, seed, e)``
  (:mod:`graft.data.order`), so a resumed run needs only the epoch it continues from.

Every file is written to a temporary name and renamed into place, and ``state.json``
only ever names complete files, so a kill at any instant leaves the previous good
checkpoint. Nothing here uses pickle: arrays are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from graft.errors import GraftError
from graft.runs import files as runs
from graft.runs import status as run_status
from graft.runs.layout import CHECKPOINT_DIR, STATE_FILE
from graft.training import snapshots
from graft.training.hooks import Hook, PhaseContext

FORMAT_VERSION = 4  # 4: no reader passes (the data order is graft's, by epoch)
_SIGNAL_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Interrupted(GraftError):
    """Training was stopped by Ctrl-C (exit 130) or SIGTERM (exit 143)."""

    def __init__(self, message: str, hint: str | None = None, signal_name: str = "SIGINT"):
        super().__init__(message, hint)
        self.exit_code = _SIGNAL_CODES.get(signal_name, 130)
        self.signal_name = signal_name


@dataclass
class State:
    """A committed checkpoint (the content of ``state.json``)."""

    phase_index: int = 1
    phase_epoch: int = 0
    phase_done: bool = False
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    weights: str | None = None
    base: str | None = None  # the phase's full snapshot that ``weights`` completes
    optimizer: str | None = None
    rng: dict = field(default_factory=dict)
    states: dict = field(default_factory=dict)
    fingerprints: dict = field(default_factory=dict)

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
        state = State.from_dict(json.loads(path.read_text("utf-8")))
        _check_types(state)
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise GraftError(
            f"The checkpoint {path} is damaged ({type(exc).__name__}: {exc}).",
            hint="restore the run folder, or start the run again with overwrite=True.",
        ) from None
    for value in state.states.values():  # arrays saved by value next to state.json
        if isinstance(value, dict) and isinstance(value.get("arrays"), str):
            value["arrays"] = snapshots.load_arrays(checkpoint_dir(run_dir) / value["arrays"])
    return state


def _check_types(state: State) -> None:
    for name in ("phase_index", "phase_epoch", "epoch"):
        if type(getattr(state, name)) is not int or getattr(state, name) < 0:
            raise ValueError(f"{name} is {getattr(state, name)!r}")
    if not isinstance(state.history, list) or not isinstance(state.states, dict):
        raise ValueError("its history or states entry is not what graft writes")
    for name in ("weights", "base"):
        if not isinstance(getattr(state, name), (str, type(None))):
            raise ValueError(f"{name} is {getattr(state, name)!r}")


def last_checkpoint(run_dir: str | Path) -> dict | None:
    """Where the last committed checkpoint of ``run_dir`` stands (for ``status.json``)."""
    try:
        state = load_state(run_dir)
    except GraftError:  # a damaged state.json is reported where it is used
        return None
    if state is None:
        return None
    return {
        "epoch": state.epoch,
        "phase_index": state.phase_index,
        "phase_epoch": state.phase_epoch,
        "path": str(checkpoint_dir(run_dir)),
    }


def write_status(run_dir: str | Path, status: str, **details) -> Path:
    """``status.json`` of ``run_dir`` with its last checkpoint (see :mod:`graft.runs.status`)."""
    return run_status.write_status(run_dir, status, last_checkpoint(run_dir), **details)


def restore_model(model: keras.Model, run_dir: str | Path, state: State) -> None:
    """Put the checkpoint's values into every variable of ``model`` (same architecture)."""
    snapshots.restore(model, checkpoint_dir(run_dir), state.weights, state.base)


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


class Checkpointer(Hook):
    """Writes end-of-epoch checkpoints of one run and stops cleanly on SIGINT/SIGTERM.

    A :class:`~graft.training.hooks.Hook`: it sees the model, the history rows and the
    states of every policy and hook, never the trainer.

    Args:
        run_dir: The run folder (checkpoints go to ``run_dir/checkpoint``).
        log: Receives one line when training is interrupted.
    """

    def __init__(self, run_dir: str | Path, log=print, fingerprints: dict | None = None):
        runs.refuse_foreign(checkpoint_dir(run_dir), folder=True)  # before any epoch
        self.run_dir = Path(run_dir)
        self.log = log
        self.fingerprints = fingerprints or {}
        self.state = State()
        self.stop_signal: str | None = None
        self._base: tuple | None = None  # (phase index, its full snapshot, changing indices)
        self._written: dict[str, tuple] = {}  # hook name -> (file, the arrays written)

    def __repr__(self) -> str:
        return f"Checkpointer(run_dir={str(self.run_dir)!r})"

    def resume_from(self, state: State) -> None:
        """Continue from ``state``: new epochs are appended to its history."""
        self.state = State.from_dict({**state.__dict__, "fingerprints": self.fingerprints})

    def phase_compiled(self, ctx: PhaseContext) -> None:
        """A resumed phase continues with the optimizer state it was stopped with."""
        if ctx.position.done and self.state.optimizer:
            path = checkpoint_dir(self.run_dir) / self.state.optimizer
            optimizer = ctx.target.optimizer
            optimizer.build(ctx.target.trainable_variables)
            snapshots.assign(optimizer.variables, snapshots.load_arrays(path), "optimizer", path)

    def callbacks(self, ctx: PhaseContext) -> list:
        return [_EpochCheckpoint(self, ctx)]

    def epoch_end(self, ctx: PhaseContext, row: dict, states: dict) -> None:
        self.save(ctx, row, states)

    def save(self, ctx: PhaseContext, row: dict, states: dict) -> None:
        """Commit one completed epoch: arrays first, then ``state.json`` naming them.

        The phase's first checkpoint writes every variable (its base); later epochs
        write only those training can change (:func:`snapshots.changing`). A hook's
        arrays are written again only when they are other array objects than the last
        ones written (a hook replaces its arrays, it never changes them in place)."""
        folder = runs.own_folder(checkpoint_dir(self.run_dir))
        old = self.state
        epoch = row["epoch"]
        weights = f"weights-e{epoch:04d}.npz"
        optimizer = f"optimizer-e{epoch:04d}.npz"
        base = self._base if self._base and self._base[0] == ctx.position.index else None
        changing = None if base is None else base[2]
        snapshots.save_indexed(folder / weights, snapshots.model_arrays(ctx.model, changing))
        if base is None:
            self._base = (ctx.position.index, weights, snapshots.changing(ctx.model))
        optimizer_arrays = [np.asarray(v) for v in ctx.target.optimizer.variables]
        snapshots.save_arrays(folder / optimizer, optimizer_arrays)
        keep = {weights, optimizer, *([base[1]] if base else [])}
        saved = {}
        for name, value in states.items():
            value = dict(value)
            if "arrays" in value:
                value["arrays"] = self._hook_arrays(folder, name, epoch, value["arrays"])
                keep.add(value["arrays"])
            saved[name] = value
        self.state = State(
            phase_index=ctx.position.index,
            phase_epoch=row["phase_epoch"],
            phase_done=False,
            epoch=epoch,
            history=[*old.history, row],
            weights=weights,
            base=base[1] if base else None,
            optimizer=optimizer,
            rng=rng_state(),
            states=saved,
            fingerprints=self.fingerprints,
        )
        self._commit()
        for stale in folder.glob("*-e*.npz"):
            if stale.name not in keep:
                stale.unlink(missing_ok=True)

    def _hook_arrays(self, folder: Path, name: str, epoch: int, arrays: list) -> str:
        """The file of a hook's arrays: the last one written if they are the same objects."""
        last = self._written.get(name)
        if last and len(last[1]) == len(arrays) and all(a is b for a, b in zip(last[1], arrays)):
            if (folder / last[0]).is_file():
                return last[0]
        file = f"{name}-e{epoch:04d}.npz"
        snapshots.save_arrays(folder / file, arrays)
        self._written[name] = (file, list(arrays))
        return file

    def after_phase(self, ctx: PhaseContext) -> None:
        """Mark the phase complete (also when stopped early) with the weights it ended with
        (early stopping may have restored an earlier epoch's) and commit."""
        if self.stop_signal or self.state.weights is None:
            return
        if self.state.phase_index != ctx.position.index:
            return
        folder, old = checkpoint_dir(self.run_dir), self.state.weights
        self.state.weights = f"weights-e{self.state.epoch:04d}-end.npz"
        snapshots.save_indexed(folder / self.state.weights, snapshots.model_arrays(ctx.model))
        stale = {old, self.state.base} - {self.state.weights, None}
        self.state.base, self.state.phase_done, self._base = None, True, None
        self._commit()
        for name in stale:
            (folder / name).unlink(missing_ok=True)

    def _commit(self) -> None:
        state = dict(self.state.__dict__)
        state["version"] = FORMAT_VERSION
        state["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        runs.write_json(checkpoint_dir(self.run_dir) / STATE_FILE, state)


class _EpochCheckpoint(keras.callbacks.Callback):
    """Turns a pending signal into :class:`Interrupted` (the hook saves every epoch)."""

    def __init__(self, owner: Checkpointer, ctx: PhaseContext):
        super().__init__()
        self.owner, self.ctx = owner, ctx

    def on_train_batch_end(self, batch, logs=None):
        if self.owner.stop_signal:
            self._interrupt("during")

    def on_epoch_end(self, epoch, logs=None):
        if self.owner.stop_signal:
            self._interrupt("after")

    def _interrupt(self, when: str):
        state = self.owner.state
        kept = (
            f"the checkpoint of epoch {state.epoch} is kept"
            if state.weights
            else "no epoch had finished, so there is no checkpoint yet"
        )
        phase = self.ctx.phase
        raise Interrupted(
            f"Interrupted by {self.owner.stop_signal} {when} an epoch of phase "
            f"{self.ctx.position.index} '{phase.name}'; {kept} in "
            f"{checkpoint_dir(self.owner.run_dir)}.",
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


def as_user_error(exc: BaseException, batch_size: int) -> BaseException:
    """Turn resource exhaustion into one actionable line, and an interruption TensorFlow
    wrapped (a signal while tracing) back into itself; anything else is unchanged."""
    from graft.errors import TrainingFailed

    interrupted = run_status.interruption(exc)
    if interrupted is not None:
        return interrupted

    name = type(exc).__name__
    if name == "ResourceExhaustedError" or isinstance(exc, MemoryError):
        return TrainingFailed(
            f"Out of memory while training with batch_size={batch_size}.",
            hint=f"try batch_size={max(1, batch_size // 2)} or a smaller image_size.",
        )
    return exc

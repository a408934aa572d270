"""Checks before a run continues from its checkpoint: the state fits the plan, and the
data, backbone and settings are the ones the run started with; and SIGTERM outside the
epochs (while caching features, building, writing) ends a run as ``interrupted``."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

from graft.errors import GraftError
from graft.runs import fingerprints
from graft.runs.layout import STATE_FILE
from graft.training.checkpoints import Interrupted, State, checkpoint_dir

_HINT = "start a new run with another out=DIR (or put the run folder back as it was)."


def validate(state: State, phases: list, run_dir: str | Path) -> None:
    """Refuse a ``state.json`` that does not fit the run's plan (tampered or foreign)."""
    total = sum(p.epochs for p in phases)
    problem = None
    if not 1 <= state.phase_index <= len(phases):
        problem = f"phase_index {state.phase_index}, but the plan has {len(phases)} phase(s)"
    elif state.phase_epoch > phases[state.phase_index - 1].epochs:
        phase = phases[state.phase_index - 1]
        problem = f"phase_epoch {state.phase_epoch}, but phase '{phase.name}' has {phase.epochs}"
    elif state.epoch > total or len(state.history) > total:
        problem = f"epoch {state.epoch} ({len(state.history)} history rows) of a {total}-epoch plan"
    elif state.weights is None or Path(state.weights).name != state.weights:
        problem = f"weights {state.weights!r}"
    elif not (checkpoint_dir(run_dir) / state.weights).is_file():
        problem = f"its weights file {state.weights} is missing"
    elif state.base is not None and (
        Path(state.base).name != state.base or not (checkpoint_dir(run_dir) / state.base).is_file()
    ):
        problem = f"its weights file {state.base!r} is missing"
    if problem is not None:
        raise GraftError(
            f"The checkpoint {checkpoint_dir(run_dir) / STATE_FILE} does not fit this run: "
            f"{problem}.",
            hint="it was edited or comes from another run; " + _HINT,
        )


def check_unchanged(state: State, now: dict, run_dir: str | Path) -> None:
    """Refuse to continue when the data, backbone or settings differ from the start."""
    saved = state.fingerprints or {}
    if saved and now and saved.get("format", 1) != now.get("format"):
        raise GraftError(
            f"Cannot resume {run_dir}: its checkpoint records fingerprints of format "
            f"{saved.get('format', 1)!r}, written by an older graft; this graft compares "
            f"format {now.get('format')!r} (data by content) and cannot tell whether the "
            "data changed.",
            hint="start a new run with another out=DIR, or resume with the graft that started it.",
        )
    changes = fingerprints.differences(saved, now)
    if changes:
        raise GraftError(
            f"Cannot resume {run_dir}: since it started, its {'; '.join(changes)} changed.",
            hint=_HINT,
        )


@contextlib.contextmanager
def signals_interrupt(run_dir):
    """SIGTERM raises :class:`Interrupted` at once (Ctrl-C already raises
    ``KeyboardInterrupt``), so the run records ``interrupted`` and exits 143 instead of
    dying with ``running`` in ``status.json``. During the epochs the checkpointer's own
    handler (:func:`~graft.training.checkpoints.stop_on_signals`) takes over."""
    if run_dir is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(
            f"Interrupted by SIGTERM outside an epoch; {run_dir} keeps its last checkpoint.",
            hint=f"continue with: graft train --resume {run_dir}",
            signal_name="SIGTERM",
        )

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

"""``RUN_DIR/status.json``: whether a run completed, is running, was interrupted or failed,
and reading back the configuration of a run to resume."""

from __future__ import annotations

import os
import time
from pathlib import Path

from graft.config import paths
from graft.config.settings import read_run_config
from graft.errors import GraftError
from graft.runs import files as runs
from graft.runs import lock
from graft.runs.layout import STATUS_FILE


def write_status(
    run_dir: str | Path, status: str, last_checkpoint: dict | None = None, **details
) -> Path:
    """Write ``status.json``: ``completed``, ``running``, ``interrupted`` or ``failed``.

    Args:
        run_dir: The run folder.
        status: The run's status.
        last_checkpoint: Where the last checkpoint stands (epoch, phase, path), if any.
        **details: More keys (``error``, ``signal``).
    """
    body = {"status": status, **details, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if status == "running":
        body["pid"] = os.getpid()
    if last_checkpoint is not None:
        body["last_checkpoint"] = last_checkpoint
    if status != "completed":
        body["resume"] = f"graft train --resume {run_dir}"
    return runs.write_json(Path(run_dir) / STATUS_FILE, body)


def saved_config(run_dir: str | Path) -> dict:
    """The ``config.yaml`` of a run folder to resume (settings, data paths, safe mode)."""
    path = Path(run_dir).expanduser() / runs.CONFIG_FILE
    if not path.is_file():
        raise GraftError(
            f"Cannot resume {run_dir}: it has no {runs.CONFIG_FILE}.",
            hint="pass the run folder (out=DIR) of an earlier 'graft train'.",
        )
    config = read_run_config(path)
    now = read_status(run_dir)
    if now.get("status") == "unknown":  # damaged: whether it completed cannot be told
        raise GraftError(
            f"Cannot resume {run_dir}: its {now['error']}.",
            hint=f"if its training did not finish, delete {Path(run_dir) / STATUS_FILE} "
            "and resume again (the checkpoint decides where it goes on).",
        )
    if now.get("status") == "completed":
        raise GraftError(
            f"{run_dir} finished training already; there is nothing to resume.",
            hint="start a new run with another out=DIR.",
        )
    return paths.located(config, run_dir)


def read_status(run_dir: str | Path) -> dict:
    """``status.json`` as it truly stands: a ``running`` run whose process is gone (killed
    hard, crashed) reads as ``interrupted``, with ``"died": true`` and its pid.

    A live writer holds the run folder's lock (:mod:`graft.runs.lock`); a dead one cannot.
    """
    try:
        body = runs.read_json(Path(run_dir) / STATUS_FILE, {}) or {}
    except (OSError, ValueError):
        return {"status": "unknown", "error": f"{STATUS_FILE} is unreadable"}
    if not isinstance(body, dict):
        return {"status": "unknown", "error": f"{STATUS_FILE} is not a mapping"}
    if body.get("status") == "running" and lock.holder(run_dir) is None:
        pid = body.get("pid")
        body = {
            **body,
            "status": "interrupted",
            "died": True,
            "error": f"the process that ran it (pid {pid}) ended without recording why",
        }
    return body


def status_note(run_dir: str | Path) -> str | None:
    """One line on a run that did not complete (``None`` when it did, or has no status):
    ``"Status: interrupted (the process that ran it (pid 7) ended ...); resume: ..."``."""
    body = read_status(run_dir)
    state = body.get("status")
    if state in (None, "completed"):
        return None
    why = body.get("error") or body.get("signal")
    line = f"Status: {state}" + (f" ({why})" if why else "")
    if state == "running":
        line += f", pid {body.get('pid')}"
    elif state in ("interrupted", "failed"):
        line += f"; resume: graft train --resume {run_dir}"
    return line


def interruption(exc: BaseException) -> BaseException | None:
    """The interruption (an exception with a ``signal_name``, or ``KeyboardInterrupt``)
    that ``exc`` is or wraps: TensorFlow re-raises an exception raised while tracing a
    function as a ``StagingError`` whose context is the original."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if getattr(exc, "signal_name", None) is not None or isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def describe_failure(exc: BaseException) -> tuple[str, dict]:
    """``(status, details)`` for ``status.json`` after ``exc`` ended a run.

    An interruption is an exception with a ``signal_name`` (``Interrupted``), or Ctrl-C,
    also when TensorFlow wrapped it (a signal while a function was being traced).
    """
    exc = interruption(exc) or exc
    signal_name = getattr(exc, "signal_name", None)
    if signal_name is not None:
        return "interrupted", {"signal": signal_name, "error": getattr(exc, "message", str(exc))}
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", {"signal": "SIGINT", "error": "interrupted"}
    text = str(exc).strip().splitlines()
    return "failed", {"error": f"{type(exc).__name__}: {text[0] if text else ''}"}

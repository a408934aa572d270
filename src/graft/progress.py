"""Progress for work that takes seconds, in one style everywhere in graft.

On an interactive terminal: a rich progress bar or spinner, cleared when the
work is done. Anywhere else -- output to a file or a pipe, ``NO_COLOR`` set,
``TERM=dumb``, a CI runner (``CI`` set) -- a few plain lines without escape codes::

    Data check: 9/36 files (25%), 0.4 s
    ...
    Data check: 36/36 files (100%), 1.2 s

Keras's own progress bars follow the same rule through :func:`keras_verbosity` (Keras's
``verbose=1`` writes ANSI colours and backspaces even into a pipe; ``verbose=2`` writes
one plain line per epoch). Progress goes to stdout, like graft's other lines and
Keras's bars (stderr holds only errors); :func:`silenced` turns it off for work nobody
watches (the demo's inner runs, ``verbose=0``) and where stdout carries data (``--json``).

Example:
    >>> from graft import progress
    >>> with progress.track("Data check", total=3, unit="files") as bar:  # doctest: +SKIP
    ...     for _ in range(3):
    ...         bar.advance()
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

#: Plain mode prints when progress crosses each of these fractions (and at the end).
PLAIN_STEPS = 4
#: ... or when this many seconds have passed since the last line.
PLAIN_EVERY_S = 10.0

_silenced = [0]


def live(stream=None) -> bool:
    """Whether ``stream`` (default: stdout) gets live, coloured progress: a terminal,
    without ``NO_COLOR``, ``TERM=dumb`` or ``CI``."""
    env = os.environ
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    if env.get("CI", "").lower() not in ("", "0", "false"):
        return False
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def keras_verbosity(verbose="auto") -> int:
    """Keras ``fit``/``predict`` verbosity: ``"auto"`` -> 1 (a live bar) on a live
    terminal, 2 (one plain line per epoch) elsewhere; ``1`` is also turned into 2 where
    the output is not live; 0 and 2 are kept."""
    if verbose == "auto" or verbose is True:
        verbose = 1
    verbose = int(verbose or 0)
    if verbose == 1 and not live(sys.stdout):
        return 2
    return verbose


@contextlib.contextmanager
def silenced():
    """No progress output inside this block (work nobody watches)."""
    _silenced[0] += 1
    try:
        yield
    finally:
        _silenced[0] -= 1


def _console(stream=None):
    from rich.console import Console

    return Console(file=stream)


class Tracker:
    """A task of ``total`` units; :meth:`advance` it as work is done."""

    def __init__(self, description: str, total: int, unit: str = "", stream=None):
        self.description, self.total, self.unit = description, max(0, int(total)), unit
        self.done = 0
        self.quiet = bool(_silenced[0]) or self.total == 0
        self._stream = stream
        self._start = self._last = time.perf_counter()
        self._printed_step = 0
        self._rich = None
        if not self.quiet and live(stream):
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._rich = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(unit),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=_console(stream),
                transient=True,
            )
            self._rich.start()
            self._task = self._rich.add_task(description, total=self.total)

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        if self.quiet:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)
            return
        now = time.perf_counter()
        step = self.done * PLAIN_STEPS // self.total
        if step > self._printed_step or now - self._last >= PLAIN_EVERY_S:
            self._printed_step, self._last = step, now
            self._line()

    def _line(self) -> None:
        unit = f" {self.unit}" if self.unit else ""
        pct = 100 * self.done // self.total
        text = f"{self.description}: {self.done}/{self.total}{unit} ({pct}%), "
        text += f"{time.perf_counter() - self._start:.1f} s"
        print(text, file=self._stream or sys.stdout, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


@contextlib.contextmanager
def track(description: str, total: int, unit: str = "", stream=None):
    """A :class:`Tracker` for the block; the bar is cleared (or the lines end) on exit."""
    tracker = Tracker(description, total, unit, stream)
    try:
        yield tracker
    finally:
        tracker.close()


@contextlib.contextmanager
def status(description: str, stream=None):
    """A spinner on a live terminal; elsewhere ``description ...`` and, at the end,
    ``description: done in N s``."""
    if _silenced[0]:
        yield
        return
    start = time.perf_counter()
    if live(stream):
        with _console(stream).status(description):
            yield
        return
    out = stream or sys.stdout
    print(f"{description} ...", file=out, flush=True)
    yield
    print(f"{description}: done in {time.perf_counter() - start:.1f} s", file=out, flush=True)

"""Draw a run's plots in a second process while the run goes on.

Drawing is pure-Python matplotlib work on one core; at the end of a run the other core
is idle while the model is saved and evaluated. :class:`PlotWorker` starts a fresh
``python`` (no TensorFlow: :mod:`graft.reporting.plots` imports only matplotlib and
numpy), sends it plot jobs over a pipe, and :meth:`PlotWorker.wait` collects them. If
the worker cannot start or fails, every job is drawn again in this process, so a plot
error surfaces exactly as without the worker.

Example:
    >>> worker = PlotWorker()                                       # doctest: +SKIP
    >>> worker.submit("training_curves", history, "plots/training_curves.png")  # doctest: +SKIP
    >>> worker.wait()                                               # doctest: +SKIP
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

from graft.reporting import plots

#: Off with ``GRAFT_PLOT_WORKER=0`` (every plot is then drawn in the calling process).
ENABLED = os.environ.get("GRAFT_PLOT_WORKER", "1") != "0"
_MAIN = "from graft.reporting import plot_worker; plot_worker.main()"


class PlotWorker:
    """Plot jobs (a function name of :mod:`graft.reporting.plots` and its arguments) drawn
    in a child process, in the order submitted."""

    def __init__(self, enabled: bool = ENABLED) -> None:
        self.jobs: list[tuple[str, tuple]] = []
        self._proc = None
        self._failed = not enabled

    def start(self) -> PlotWorker:
        """Start the worker now, before any job: it imports matplotlib and loads its fonts
        while this process works (:func:`graft.reporting.plots.warm_up`), so the jobs
        sent later are drawn at once. Returns ``self``."""
        if not self._failed and self._proc is None:
            self._spawn()
        return self

    def _spawn(self) -> None:
        # The worker imports the very graft this process runs (same sys.path).
        env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join(sys.path)}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _MAIN],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        except (OSError, ValueError):
            self._failed = True

    def close(self) -> None:
        """Stop the worker without waiting for its jobs (a run that failed); idempotent."""
        proc, self._proc, self.jobs = self._proc, None, []
        if proc is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
            proc.wait()

    def submit(self, name: str, *args) -> None:
        """Queue ``plots.<name>(*args)``; drawing starts at once in the worker."""
        self.jobs.append((name, args))
        if self._failed:
            return
        try:
            job = pickle.dumps((name, args), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # not picklable: everything is drawn here at wait()
            self._failed = True
            return
        if self._proc is None:
            self._spawn()
            if self._failed:
                return
        try:
            self._proc.stdin.write(job)
            self._proc.stdin.flush()
        except (OSError, ValueError):
            self._failed = True

    def submitted(self, name: str, path) -> bool:
        """Whether ``plots.<name>`` was queued for ``path``."""
        return any(n == name and str(a[-1]) == str(path) for n, a in self.jobs)

    def wait(self) -> None:
        """Wait for every job; draw them here if the worker did not."""
        if self._proc is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                self._failed = True
            if self._proc.wait() != 0:
                self._failed = True
            self._proc = None
        if self._failed:
            for name, args in self.jobs:
                getattr(plots, name)(*args)
        self.jobs = []


def main() -> None:
    """The worker: draw each pickled job read from stdin; exit 1 on the first failure."""
    stream = sys.stdin.buffer
    plots.warm_up()
    while True:
        try:
            name, args = pickle.load(stream)
        except EOFError:
            return
        getattr(plots, name)(*args)

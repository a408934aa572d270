"""What every command shares: the console, one-line logging, and the command class
that groups ``--help`` by setting group and imports the backend only when it runs."""

from __future__ import annotations

import dataclasses
import os
import time

import click
from rich.console import Console

from graft import _backend, _quiet, progress
from graft.config.fields import GROUPS

#: No styles (escape codes) where progress is plain: NO_COLOR, TERM=dumb, CI, no terminal.
console = Console(color_system="auto" if progress.live() else None)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@dataclasses.dataclass
class Session:
    """The ``graft`` group's own flags (``--debug``, ``--verbose``) for the commands of one
    invocation: click's context object (``ctx.obj``), made fresh by each call of
    :func:`graft.cli.main.main`, so one call's ``--debug`` never leaks into the next
    (tests and notebooks call ``main`` many times in one process)."""

    debug: bool = False
    verbose: bool = False


def _process_start() -> float:
    """When this process started, on the ``time.perf_counter`` clock (Linux: from
    ``/proc``, so the interpreter's own start counts; elsewhere: now)."""
    now = time.perf_counter()
    try:
        fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        uptime = float(open("/proc/uptime").read().split()[0])
        return now - max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return now


#: When the command started ("Done in" is the whole command's wall time).
STARTED = _process_start()


def session() -> Session:
    """The running invocation's :class:`Session` (defaults outside a command, e.g. when a
    test invokes one command object directly)."""
    ctx = click.get_current_context(silent=True)
    found = ctx.find_object(Session) if ctx is not None else None
    return found if found is not None else Session()


def log(line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)


def import_backend() -> None:
    """Import TensorFlow/Keras quietly (or not, with ``graft --verbose``)."""
    _quiet.import_backend(session().verbose)


def fit_verbosity() -> int:
    """Keras's live bar on a terminal, one plain line per epoch elsewhere."""
    return progress.keras_verbosity("auto")


#: Export formats written by TensorFlow's converters (ONNX goes through tf2onnx). Every
#: command runs on any backend (docs/plans/any-backend.md); these exports need TensorFlow.
TENSORFLOW_EXPORTS = ("savedmodel", "tflite", "onnx")


def tensorflow_use(command: str | None, params: dict) -> str | None:
    """What in this invocation needs TensorFlow (``"graft export --format tflite"``), or
    None."""
    if command == "export" and params.get("fmt") in TENSORFLOW_EXPORTS:
        return f"graft export --format {params['fmt']}"
    return None


class SettingOption(click.Option):
    """An option generated from a setting; ``group`` picks its ``--help`` section."""

    def __init__(self, *args, group: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group


class GraftCommand(click.Command):
    """A command whose help lists options by group, and which imports Keras (quietly)
    only when it runs, so that ``--help`` and usage errors stay fast. A command made
    with ``needs_backend=False`` never imports it (it calls :func:`import_backend`
    itself where it needs Keras), nor does a run with one of :attr:`NO_BACKEND` set
    (``--print-plan``), which answers from the settings alone."""

    #: Flags whose command answers from the settings alone (no Keras, no TensorFlow).
    NO_BACKEND = ("print_plan",)

    def __init__(self, *args, needs_backend: bool = True, **kwargs):
        kwargs.setdefault("context_settings", CONTEXT)
        super().__init__(*args, **kwargs)
        self.needs_backend = needs_backend

    def invoke(self, ctx: click.Context):
        if not any(ctx.params.get(flag) for flag in self.NO_BACKEND):
            needs_tensorflow = tensorflow_use(self.name, ctx.params)
            if self.needs_backend or needs_tensorflow:
                _backend.check()  # one line naming the extra when no backend is installed
            if needs_tensorflow:
                _backend.require_tensorflow(needs_tensorflow)
            if self.needs_backend:
                import_backend()
        return super().invoke(ctx)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list] = {}
        for param in self.get_params(ctx):
            if not isinstance(param, click.Option):
                continue
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "group", None) or "", []).append(record)
        for group in ("", *GROUPS):
            if sections.get(group):
                title = f"{group.capitalize()} options" if group else "Options"
                with formatter.section(title):
                    formatter.write_dl(sections[group])


class GraftGroup(click.Group):
    """A group whose commands (and subgroups) are :class:`GraftCommand` by default."""

    command_class = GraftCommand

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("context_settings", CONTEXT)
        super().__init__(*args, **kwargs)


GraftGroup.group_class = GraftGroup

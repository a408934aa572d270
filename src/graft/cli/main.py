"""The ``graft`` command line: the command group, and errors as one line.

Nothing here decides anything about training; every command parses its flags, makes
one call to :mod:`graft.api` (or a lower layer), and renders the result. Errors a user
can cause print one line on stderr, naming flags, and exit 2; a failure while working
exits 1; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import contextlib
import errno
import sys
import threading

import click

from graft import _backend
from graft.cli import tools, train
from graft.cli.base import GraftGroup, Session
from graft.cli.options import FLAGS, command_flags, to_flags
from graft.errors import GraftError, first_line


@click.group(cls=GraftGroup)
@click.version_option(package_name="keras-graft", prog_name="graft")
@click.option("--verbose", "-v", is_flag=True, help="Show TensorFlow's own logs.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def app(ctx: click.Context, verbose: bool, debug: bool):
    """Graft a pre-trained Keras model into your own classifier: feature extraction,
    fine-tuning and hybrid, done right."""
    session = ctx.ensure_object(Session)
    session.debug, session.verbose = debug, verbose


for _command in (
    train.train,
    train.lr_find,
    train.compare,
    tools.evaluate,
    tools.report,
    tools.predict,
    tools.export,
    tools.backbones,
    tools.data,
    tools.inspect,
    tools.probe,
    tools.demo,
    tools.cache,
):
    app.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run a command, turn errors into one line and an exit code."""
    _tolerant_streams()
    # Made here, not inside the group, because the error handling below runs after click's
    # context is gone and must still know whether --debug was given.
    session = Session()
    try:
        code = app.main(args=argv, prog_name="graft", standalone_mode=False, obj=session)
        return code if isinstance(code, int) else 0
    except GraftError as exc:
        if session.debug:
            raise
        flags = {**FLAGS, **command_flags(app)}
        print(f"graft: error: {to_flags(str(exc), flags)}", file=sys.stderr)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("graft: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an environment failure: one line unless --debug
        if session.debug:
            raise
        if _disk_full(exc):  # e.g. TensorFlow's ResourceExhaustedError while exporting
            print(
                f"graft: error: No space left on the device: {first_line(exc)[:200]} "
                "HINT: free some space, or write to another disk (--out).",
                file=sys.stderr,
            )
            return 2
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("tensorflow"):
            # A path the command table in cli/base.py does not know yet: still one line.
            print(
                "graft: error: This needs TensorFlow for now (Keras's backend here is "
                f"{_backend.name()}, and TensorFlow is not installed). HINT: pip install "
                '"keras-graft[tensorflow]" and run with KERAS_BACKEND=tensorflow.',
                file=sys.stderr,
            )
            return 2
        if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            where = exc.filename or "a file"
            print(
                f"graft: error: Cannot write {where}: {exc.strerror}. "
                "HINT: make the folder writable, or write to another one (--out).",
                file=sys.stderr,
            )
            return 2
        print(
            f"graft: error: {type(exc).__name__}: {first_line(exc)} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def _tolerant_streams() -> None:
    """A stdout that cannot encode a name (``PYTHONIOENCODING=ascii``, a C locale) shows
    it escaped (``caf\\xe9``) instead of failing half-way through the output."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(Exception):
                stream.reconfigure(errors="backslashreplace")


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a full disk or quota."""
    while exc is not None:
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run() -> None:
    """The ``graft`` console script.

    Once TensorFlow is loaded, tearing the interpreter down (its modules, C++ objects)
    takes seconds of nothing for the user: after the command, the exit handlers run
    (temporary folders, logging) and the process ends at once.
    """
    code = main()
    if "tensorflow" not in sys.modules or threading.active_count() > 1:
        sys.exit(code)
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (graft ... | head)
            pass
    os._exit(code)


if __name__ == "__main__":
    run()

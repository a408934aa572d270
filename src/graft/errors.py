"""Exceptions for problems a user can cause and fix.

Every error graft raises for bad input is a :class:`GraftError` whose message says
what was wrong and what to do. The CLI prints it as one line and exits non-zero;
the Python API lets it propagate like any other exception.
"""

from __future__ import annotations


class GraftError(Exception):
    """A problem with the user's input or environment, with a hint to fix it.

    Args:
        message: What was wrong, naming the bad value.
        hint: What to do about it (appended after ``HINT:``).
    """

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} HINT: {hint}" if hint else message)


class UnknownNameError(GraftError, ValueError):
    """An unknown backbone, strategy, layer, block or option value."""


class SpecError(GraftError, ValueError):
    """A trainability spec that is malformed or would change nothing."""


class WeightsUnavailableError(GraftError):
    """Pre-trained weights that cannot be found or downloaded."""


class DataError(GraftError):
    """Training or evaluation data that cannot be used as given."""


class TrainingFailed(GraftError):
    """Training started but could not finish (for example a NaN loss)."""

    exit_code = 1


def did_you_mean(name: str, choices, n: int = 3) -> str:
    """A short 'Did you mean ...?' suffix for an unknown name (up to ``n`` guesses), or ''."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unknown_keys(given, valid, what: str = "setting") -> None:
    """Raise one :class:`UnknownNameError` for the first key of ``given`` not in ``valid``.

    The message says "Unknown setting 'x'. Did you mean 'y'? Valid settings are ...".
    """
    valid = list(valid)
    for key in given:
        if key not in valid:
            raise UnknownNameError(
                f"Unknown {what} {key!r}.{did_you_mean(str(key), valid, n=1)} "
                f"Valid {what}s are: {', '.join(sorted(valid))}."
            )

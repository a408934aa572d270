"""The command line: parse, make one API call, render."""

from graft.cli.main import main, run

__all__ = ["main", "run"]

"""Documented import path kept for compatibility: see :mod:`graft.core.freezing`."""

from graft.core.freezing import *  # noqa: F401,F403

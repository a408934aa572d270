"""Documented import path kept for compatibility: see :mod:`graft.config.strategies`."""

from graft.config.strategies import *  # noqa: F401,F403

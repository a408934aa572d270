"""Documented import path kept for compatibility: see :mod:`graft.core.model`."""

from graft.core.model import *  # noqa: F401,F403

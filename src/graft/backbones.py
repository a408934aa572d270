"""Documented import path kept for compatibility: see :mod:`graft.core.backbones`."""

from graft.core.backbones import *  # noqa: F401,F403

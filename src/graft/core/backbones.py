"""Backbones: the registry (:mod:`graft.core.registry`) and its loaders
(:mod:`graft.core.loaders`) under one name."""

from graft.core.loaders import (
    Backbone,
    from_model,
    is_model_path,
    load_backbone,
    load_user_backbone,
    resolve,
)
from graft.core.registry import REGISTRY, BackboneSpec, block_count, get_spec

__all__ = [
    "REGISTRY",
    "Backbone",
    "BackboneSpec",
    "block_count",
    "from_model",
    "get_spec",
    "is_model_path",
    "load_backbone",
    "load_user_backbone",
    "resolve",
]

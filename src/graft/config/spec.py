"""The trainability spec grammar: which backbone layers a phase trains, as text.

``none`` (all frozen), ``all``, ``blocks:N`` (the top N blocks), ``layers:N`` (the
last N layers) or ``from:LAYER`` (that layer and every layer after it). Parsing is
plain Python; :mod:`graft.core.freezing` applies a spec to a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from graft.errors import SpecError

_SPEC = re.compile(r"^(all|none|blocks:(\d+)|layers:(\d+)|from:(.+))$")
SPEC_HELP = "all, none, blocks:N, layers:N or from:LAYER"


@dataclass(frozen=True)
class TrainableSpec:
    """A parsed trainability spec (see the module docstring)."""

    kind: str  # "all" | "none" | "blocks" | "layers" | "from"
    value: int | str | None = None

    @classmethod
    def parse(cls, text: str | TrainableSpec) -> TrainableSpec:
        if isinstance(text, TrainableSpec):
            return text
        match = _SPEC.match(str(text).strip())
        if not match:
            raise SpecError(f"Bad trainable spec: {text!r}. Expected {SPEC_HELP}.")
        whole, blocks, layers, start = match.groups()
        if blocks is not None:
            return cls("blocks", _positive(int(blocks), text))
        if layers is not None:
            return cls("layers", _positive(int(layers), text))
        if start is not None:
            return cls("from", start)
        return cls(whole)

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value}"


def _positive(n: int, text) -> int:
    if n < 1:
        raise SpecError(f"Bad trainable spec: {text!r}; the count must be at least 1.")
    return n

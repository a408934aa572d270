"""Cut a model at a layer: ``block3_pool`` at the top level, ``trunk/inner`` inside a nested model.

The result ends at that layer's output and shares its layers (and weights) with the
original; everything after it (the old head) is dropped.
"""

from __future__ import annotations

import keras

from graft.core import blocks, keras_compat
from graft.errors import GraftError, UnknownNameError, did_you_mean


def cut(model: keras.Model, layer_name: str, path: str) -> keras.Model:
    """``model`` ending at ``layer_name``'s output; ``trunk/inner`` cuts inside a nested model."""
    parts = layer_name.split(blocks.SEP)
    found = model
    for depth, part in enumerate(parts):
        names = (
            [layer.name for layer in blocks.units(found)] if isinstance(found, keras.Model) else []
        )
        if part not in names:
            where = "the top level" if depth == 0 else blocks.SEP.join(parts[:depth])
            candidates = list(dict.fromkeys(p for p, _ in blocks.walk(model)))
            candidates += [p for p in blocks.containers(model) if p not in candidates]
            inside = [p for p in candidates if p.endswith(blocks.SEP + layer_name)]
            raise UnknownNameError(
                f"No layer named {part!r} in {where} of {path}."
                + (f" Did you mean {inside[0]!r}?" if inside else "")
                + ("" if inside else did_you_mean(layer_name, candidates)),
                hint=f"its last layers are: {', '.join(names[-6:])}; run 'graft inspect {path}'."
                if names
                else f"{parts[depth - 1]!r} is a layer, not a model; run 'graft inspect {path}'.",
            )
        found = found.get_layer(part)
    cut = _cut_nested(model, parts)
    cut.name = f"{model.name}_cut"
    return cut


def _cut_nested(model: keras.Model, parts: list[str]) -> keras.Model:
    layer = model.get_layer(parts[0])
    node = _call_in(model, layer)
    if len(parts) == 1:
        outputs = node.output_tensors
        return keras.Model(model.inputs, outputs[0] if len(outputs) == 1 else outputs)
    inner = _cut_nested(layer, parts[1:])
    # The rebuilt inner model keeps the nested model's name, so layer paths
    # (``trunk/inner``) and weight paths read the same before and after the cut.
    inner.name = layer.name
    args = node.input_tensors
    return keras.Model(model.inputs, inner(args[0] if len(args) == 1 else args), name=model.name)


def _call_in(model: keras.Model, layer):
    """The node where ``model``'s graph calls ``layer`` (its own inner graph excluded)."""
    inside = {id(x) for x in model.layers}
    # A layer keeps a node for every graph that ever called it (a backbone nested in a
    # model is also called by the model wrapping it); this model's own call is the one
    # whose inputs come from this model's layers or inputs.
    calls = [
        n
        for n in keras_compat.inbound_nodes(layer)
        if id(n.operation) == id(layer) and all(_in_graph(t, inside) for t in n.input_tensors)
    ]
    if len(calls) != 1:
        raise GraftError(
            f"Cannot cut at {layer.name!r}: it is called {len(calls)} times in {model.name}."
        )
    return calls[0]


def _in_graph(tensor, inside: set) -> bool:
    operation = keras_compat.producer(tensor)
    return operation is not None and (
        id(operation) in inside or isinstance(operation, keras.layers.InputLayer)
    )


def outputs_at(model: keras.Model, paths: list[str]) -> keras.Model:
    """One ``keras.Model`` whose outputs are the outputs of the layers at ``paths`` (in
    order), so one forward pass gives every one of them.

    A path inside a nested model (``trunk/inner``) is reached through a multi-output copy
    of that model (same layers and weights), called once for all the paths inside it.
    Known cost: when a path lies *after* such a nested model too (the model's own output),
    the original nested model is also run for it, so that nested part runs twice per
    batch (rebuilding the outer graph on the copy's output would add nodes to the
    caller's layers). Layers and weights are shared with ``model``; ``model`` itself is
    not changed (its layers gain no inbound node).
    """
    found = _tensors_at(model, list(dict.fromkeys(paths)))
    return keras.Model(model.inputs, [found[p] for p in paths], name=f"{model.name}_taps")


def _tensors_at(model: keras.Model, paths: list[str]) -> dict:
    """``path -> tensor`` in ``model``'s own graph (its inputs: ``model.inputs``)."""
    out = {}
    nested: dict[str, list[str]] = {}
    for path in paths:
        head, _, rest = path.partition(blocks.SEP)
        if rest:
            nested.setdefault(head, []).append(rest)
        else:
            out[path] = _call_in(model, model.get_layer(head)).output_tensors[0]
    for name, inner_paths in nested.items():
        container = model.get_layer(name)
        inner = _tensors_at(container, inner_paths)
        taps = keras.Model(container.inputs, [inner[p] for p in inner_paths], name=f"{name}_taps")
        args = _call_in(model, container).input_tensors
        values = taps(args[0] if len(args) == 1 else args)
        values = values if isinstance(values, (list, tuple)) else [values]
        out.update({f"{name}{blocks.SEP}{p}": v for p, v in zip(inner_paths, values)})
    return out

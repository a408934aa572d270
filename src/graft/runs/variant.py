"""A second ``.keras`` file of the same model that differs only in a few top-level
layers' values (``last.keras`` beside ``model.keras`` when the kept epoch is not the last),
written from the first file instead of serializing the model again.

Serializing a model walks every layer and variable (about 1.5 s for MobileNetV2 on two
CPU cores); the kept epoch and the last one of a feature-extraction run differ only in
the head's few layers. :func:`changed_layers` takes, before the kept weights are set back,
the values of the top-level layers whose weights differ, exactly as Keras writes them
(``layer.save_own_variables``); :func:`write_variant` copies the saved file and replaces
those values in its weights file (the layer's ``layers/<class name>/vars/<i>``, found by
the layer name Keras records on the group). Where the layout is not the expected one, or
a changed weight belongs to a nested model (fine-tuning changed the backbone), nothing
is taken or written: the caller then saves the model as usual.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from graft.runs.files import atomic_write

#: The weights file inside a ``.keras`` archive.
WEIGHTS = "model.weights.h5"


def states(model, names) -> dict:
    """``{layer name: {key: array}}`` of the named top-level layers, as Keras saves them."""
    out = {}
    for name in names:
        store: dict = {}
        model.get_layer(name).save_own_variables(store)
        out[name] = {str(k): np.array(v) for k, v in store.items()}
    return out


def changed_layers(model, other: list) -> dict | None:
    """The current values (:func:`states`) of ``model``'s top-level layers whose weights
    differ from ``other`` (a :meth:`keras.Model.get_weights` list of the same model), or
    ``None`` when a differing weight is not a top-level leaf layer's own (a nested model
    changed: save the whole model instead)."""
    current = model.get_weights()
    if len(current) != len(other):
        return None
    owner = {}
    for layer in model.layers:
        for v in layer.weights:
            owner.setdefault(id(v), layer)
    names: list[str] = []
    for v, a, b in zip(model.weights, current, other):
        if a.shape == np.shape(b) and np.array_equal(a, b):
            continue
        layer = owner.get(id(v))
        if layer is None:
            return None
        if layer.name not in names:
            names.append(layer.name)
    found = states(model, names)
    for name, values in found.items():
        # A layer's own variables are all its weights only where no nested layer has any.
        if len(values) != len(model.get_layer(name).weights):
            return None
    return found


def write_variant(source, path, changes: dict) -> bool:
    """Write ``path``: the ``.keras`` file ``source`` with the layers' values ``changes``
    (:func:`changed_layers`). ``False``, and nothing written, when ``source``'s weights
    file does not hold those layers with exactly those keys, shapes and dtypes."""
    import h5py

    with zipfile.ZipFile(source) as archive:
        infos = archive.infolist()
        members = {info.filename: archive.read(info) for info in infos}
    if WEIGHTS not in members:
        return False
    buffer = io.BytesIO(members[WEIGHTS])
    with h5py.File(buffer, "r+") as h5:
        groups = _top_level_vars(h5)
        for name, values in changes.items():
            group = groups.get(name)
            if group is None or set(group.keys()) != set(values):
                return False
            for key, value in values.items():
                data = group[key]
                if data.shape != value.shape or data.dtype != value.dtype:
                    return False
        for name, values in changes.items():
            for key, value in values.items():
                groups[name][key][...] = value
    members[WEIGHTS] = buffer.getvalue()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        for info in infos:
            out.writestr(info, members[info.filename])
    atomic_write(Path(path), archive.getvalue())
    return True


def _top_level_vars(h5) -> dict:
    """``{layer name: its vars group}`` of the model's top-level layers: Keras writes a
    layer's variables to ``layers/<class name, numbered>/vars`` with the layer's name in
    the group's ``name`` attribute; a name found twice maps to nothing."""
    import h5py

    found: dict = {}
    layers = h5.get("layers")
    if not isinstance(layers, h5py.Group):
        return found
    for child in layers.values():
        group = child.get("vars") if isinstance(child, h5py.Group) else None
        if not isinstance(group, h5py.Group):
            continue
        name = group.attrs.get("name")
        if isinstance(name, bytes):
            name = name.decode()
        if isinstance(name, str):
            found[name] = None if name in found else group
    return {k: v for k, v in found.items() if v is not None}

"""Reading a notebook's model file as its author's Keras ran it: .keras, and whole-model .h5 files
written by Keras 2 (tf.keras) or by Keras 3.

Keras 3 loads Keras 2 files, but not always into the same computation:
- it refuses arguments that Keras 2 wrote and that change nothing at inference (`time_major`);
- Keras 2 saved an RNN's initial state as extra inputs beside its sequence, which Keras 3 rejects;
- Keras 3 passes no padding mask to an RNN called with an initial state, and its Concatenate keeps a
  position when *any* input is unmasked there, where Keras 2 kept it when *all* were: a Keras 2
  init-inject or par-inject model that skipped its padding would read it under Keras 3.
So a Keras 2 file is rebuilt with Keras 2's masking (KERAS2_LAYERS), and its weights
are matched by layer name (Keras 3 can order a Keras 2 model's layers differently). A Keras 3 .h5
saves the operations between layers (the `not_equal` that computes an Embedding's mask) as if they
were layers and cannot load them back by name: they are named to it. Keras 3 files keep Keras 3's
semantics, since those are what their notebooks computed.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import keras
from keras import layers, ops

# Arguments Keras 2 wrote into layer configs that Keras 3 refuses and that change nothing at
# inference (time_major: tf.keras RNNs always ran batch-major from Functional models).
KERAS2_ONLY_ARGUMENTS = ("time_major",)
RECURRENT_CLASSES = {"LSTM": layers.LSTM, "GRU": layers.GRU, "SimpleRNN": layers.SimpleRNN}


class ModelFileError(ValueError):
    """A model file Keras cannot load; one line."""


class Keras2Concatenate(layers.Concatenate):
    """Concatenate with Keras 2's mask: a position is kept where every input keeps it."""

    def compute_mask(self, inputs, mask=None):
        if mask is None or all(m is None for m in mask):
            return None
        masks = []
        for x, m in zip(inputs, mask):
            if m is None:
                masks.append(ops.ones_like(x, dtype="bool"))
            else:
                m = ops.expand_dims(m, -1) if len(m.shape) < len(x.shape) else m
                masks.append(ops.logical_or(m, ops.zeros_like(x, dtype="bool")))
        # Not ops.concatenate: while a model is built that is an operation auto-named "concatenate", the
        # name of this very layer in a process that has made no other, and Keras 3 refuses the model.
        joined = masks[0]
        for m in masks[1:]:
            joined = ops.append(joined, m, axis=self.axis)
        return ops.all(joined, axis=-1)


def _keras2_recurrent(base):
    """`base` (LSTM, GRU, SimpleRNN) that takes its sequence's mask with an initial state too, as Keras 2 did."""

    def __call__(self, sequences, *args, **kwargs):
        if kwargs.get("mask") is None and (args or kwargs.get("initial_state") is not None):
            mask = keras.src.backend.get_keras_mask(sequences)
            if mask is not None:
                kwargs["mask"] = mask
        return base.__call__(self, sequences, *args, **kwargs)

    return type(base.__name__, (base,), {"__call__": __call__, "__doc__": _keras2_recurrent.__doc__})


KERAS2_LAYERS = {"Concatenate": Keras2Concatenate,
                 **{name: _keras2_recurrent(cls) for name, cls in RECURRENT_CLASSES.items()}}


def _without_keras2_arguments(node):
    if isinstance(node, dict):
        return {k: _without_keras2_arguments(v) for k, v in node.items() if k not in KERAS2_ONLY_ARGUMENTS}
    if isinstance(node, list):
        return [_without_keras2_arguments(v) for v in node]
    return node


def _keras3_node(node):
    """A Keras 2 RNN node [[sequence], [h], [c]] as Keras 3 calls it: args [sequence], initial_state [h, c]."""
    if not isinstance(node, list) or len(node) < 2:
        return node
    tensor = lambda entry: {"class_name": "__keras_tensor__",  # noqa: E731
                            "config": {"shape": [None], "dtype": "float32", "keras_history": list(entry[:3])}}
    kwargs = dict(node[0][3]) if len(node[0]) > 3 else {}
    return {"args": [tensor(node[0])], "kwargs": {**kwargs, "initial_state": [tensor(e) for e in node[1:]]}}


def keras2_config(config: dict) -> dict:
    """A Keras 2 model config that Keras 3 rebuilds into the same computation (with KERAS2_LAYERS)."""
    config = _without_keras2_arguments(config)
    for layer in config.get("config", {}).get("layers", []):
        if layer.get("class_name") in RECURRENT_CLASSES:
            layer["inbound_nodes"] = [_keras3_node(node) for node in layer.get("inbound_nodes", [])]
    return config


def operations_in(config: dict) -> dict:
    """The Keras operation classes a Keras 3 .h5 config names as if they were layers."""
    import keras.src.ops as keras_ops

    names = {layer.get("class_name") for layer in config.get("config", {}).get("layers", [])
             if not hasattr(layers, layer.get("class_name", ""))}
    found = {}
    for module in (keras_ops.numpy, keras_ops.core, keras_ops.math, keras_ops.nn):
        for name in names:
            candidate = getattr(module, name, None)
            if isinstance(candidate, type) and issubclass(candidate, keras_ops.Operation):
                found.setdefault(name, candidate)
    return found


def _load_h5(path: Path, unsafe_lambda: bool):
    import h5py
    from keras.src.legacy.saving import json_utils, legacy_h5_format, saving_options, saving_utils
    from keras.src.saving import serialization_lib

    with h5py.File(path, "r") as handle:
        config = handle.attrs.get("model_config")
        if config is None or "model_weights" not in handle:
            raise ValueError("no whole model in it (a weights-only file? save the model with model.save)")
        version = handle.attrs.get("keras_version", b"")
        version = version.decode() if isinstance(version, bytes) else str(version)
        config = json_utils.decode(config.decode() if isinstance(config, bytes) else config)
        if version.startswith(("1.", "2.")):
            config, custom = keras2_config(config), dict(KERAS2_LAYERS)
        else:
            custom = operations_in(config)
        with saving_options.keras_option_scope(use_legacy_config=True), \
                serialization_lib.SafeModeScope(not unsafe_lambda):
            model = saving_utils.model_from_config(config, custom_objects=custom)
        weights = handle["model_weights"]
        saved = {name for name in legacy_h5_format.load_attributes_from_hdf5_group(weights, "layer_names")
                 if legacy_h5_format.load_subset_weights_from_hdf5_group(weights[name])}
        missing = [layer.name for layer in model.layers if layer.weights and layer.name not in saved]
        if missing:
            raise ValueError(f"the file holds no weights for layer(s) {', '.join(missing)}")
        legacy_h5_format.load_weights_from_hdf5_group_by_name(weights, model)
    return model


def load_keras_model(path: Path, unsafe_lambda: bool = False):
    """A notebook's model file, in safe mode (no Lambda code runs) unless told otherwise;
    ModelFileError says in one line why Keras cannot load it."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            # Keras 3 warns about the input_dim that every Keras 2 Embedding config carries.
            warnings.filterwarnings("ignore", message="Do not pass an `input_shape`", category=UserWarning)
            if path.suffix.lower() in (".h5", ".hdf5"):
                return _load_h5(path, unsafe_lambda)
            return keras.models.load_model(path, compile=False, safe_mode=not unsafe_lambda)
    except Exception as exc:  # Keras raises many types for files it cannot read
        custom = _custom_classes(path)
        if custom:
            raise ModelFileError(f"{path}: Keras cannot load it: it uses custom layer(s) {', '.join(custom)}, whose "
                                 "code is not in the file (import it and register it with "
                                 "keras.saving.register_keras_serializable, then save the model again)") from None
        raise ModelFileError(f"{path}: Keras cannot load it ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:300]})") from None


def _custom_classes(path: Path) -> list[str]:
    """The classes a model file names that are neither Keras layers nor Keras operations."""
    import json
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
        else:
            import h5py

            with h5py.File(path, "r") as handle:
                config = json.loads(handle.attrs["model_config"])
    except Exception:  # an unreadable file has no config to name classes from
        return []
    known = operations_in(config)
    return sorted({entry["class_name"] for entry in config.get("config", {}).get("layers", [])
                   if not entry.get("module", "keras").startswith("keras") or
                   (not hasattr(layers, entry["class_name"]) and entry["class_name"] not in known)}
                  - {"Lambda"})

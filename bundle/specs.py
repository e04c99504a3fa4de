"""The bundle's graphs as data: roles, tensor keys and names, dtypes, shapes and parity tolerances.

A tensor has a *key* (what it is in the contract: "image", "token", "h_next", ...) and a *name*
(what it is called inside the ONNX graph). The exporter names the graphs' tensors from
TENSOR_NAMES and writes both into bundle.json; everything downstream (parity, variants, the
server) looks names up by key in the manifest, so a renamed tensor is renamed everywhere.

The decoder's state follows one rule, whatever the decoder: decoder_init outputs the initial
value of every state tensor; decoder_step takes "token" and the state, and returns "log_probs"
and, for each state tensor it updates, "<key>_next". State it does not update (the projected
image, "context") is carried unchanged from step to step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BATCH = "batch"  # the dynamic axis name written into every graph
GRAPH_ROLES = ("encoder", "decoder_init", "decoder_step")
NEXT = "_next"   # suffix of a state tensor's updated value in the step graph's outputs
PARITY_ATOL = 1e-4  # the graphs' accepted |ONNX - Keras| (the encoder's per unit of its largest feature)

# key -> ONNX tensor name. ONNX names are unique in a graph, so the new state is h_next/c_next.
# "prefix" is the state of a whole-prefix decoder (the padded words so far, for a model that can
# only be run on the whole sequence).
# "memory" is an attention decoder's projected image map, one row per position; "attention" is an
# optional output of its step: the weights over those positions that the step read the map with.
# A key not listed here is its own name (an imported decoder's h2, c2, context2 ...).
TENSOR_NAMES = {key: key for key in ("image", "features", "h", "c", "context", "memory", "token", "log_probs",
                                     "h_next", "c_next", "prefix", "prefix_next", "attention")}
ATTENTION = "attention"  # the step graph's optional output: [batch, positions] weights, each row summing to 1


@dataclass(frozen=True)
class TensorSpec:
    key: str
    name: str
    dtype: str          # numpy dtype name
    shape: tuple        # BATCH for the dynamic batch axis, ints elsewhere

    def as_dict(self) -> dict:
        return {"key": self.key, "name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def tensor(key: str, dtype: str, *shape) -> TensorSpec:
    """The tensor `key`, named as TENSOR_NAMES says at the time of the call."""
    return TensorSpec(key, TENSOR_NAMES.get(key, key), dtype, (BATCH, *shape))


@dataclass(frozen=True)
class GraphSpec:
    role: str                   # one of GRAPH_ROLES
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    atol: float = PARITY_ATOL   # accepted |ONNX - Keras| <= atol + rtol * |Keras| (numpy.allclose)
    rtol: float = 1e-4
    # The encoder's features are on whatever scale its last layer leaves: a few thousandths for a
    # random InceptionV3, a few units for a learned part that standardises the trunk's maps. Its
    # atol is then per unit of the largest feature, on either scale (a fixed 1e-4 would be 250x
    # looser than the docs say on features of 4e-3).
    atol_per_unit_of_largest: bool = False

    def close(self, got: np.ndarray, want: np.ndarray) -> bool:
        """Whether a graph's output `got` matches the reference `want` within this spec's tolerance."""
        return bool(np.allclose(got, want, rtol=self.rtol, atol=self.effective_atol(want)))

    def effective_atol(self, want: np.ndarray) -> float:
        largest = float(np.max(np.abs(want))) if self.atol_per_unit_of_largest and np.size(want) else 0.0
        return self.atol * largest if largest > 0 else self.atol

    @property
    def onnx_file(self) -> str:
        return f"{self.role}.onnx"

    @property
    def optimized_file(self) -> str:
        return f"{self.role}.opt.onnx"


@dataclass(frozen=True)
class StateSpec:
    """One tensor of the decoder's state: its key, dtype, shape without the batch axis, and
    whether the step updates it (returns "<key>_next") or carries it unchanged."""

    key: str
    dtype: str
    shape: tuple
    updated: bool


def decoder_specs(input_shape: tuple, feature_shape: tuple, vocab_size: int, state: list[StateSpec],
                  attention_positions: int = 0) -> list[GraphSpec]:
    """The three graphs of a captioner whose encoder gives one image's features as `feature_shape`
    ((2048,) pooled, (64, 2048) a map) and whose decoder carries `state` (in decoder_init's output
    order); with `attention_positions`, the step also outputs its attention weights over them."""
    f32 = "float32"
    return [
        GraphSpec("encoder", (tensor("image", f32, *input_shape),), (tensor("features", f32, *feature_shape),),
                  atol_per_unit_of_largest=True),
        GraphSpec("decoder_init", (tensor("features", f32, *feature_shape),),
                  tuple(tensor(s.key, s.dtype, *s.shape) for s in state)),
        GraphSpec("decoder_step",
                  (tensor("token", "int32", 1), *(tensor(s.key, s.dtype, *s.shape) for s in state)),
                  (tensor("log_probs", f32, vocab_size),
                   *(tensor(s.key + NEXT, s.dtype, *s.shape) for s in state if s.updated),
                   *([tensor(ATTENTION, f32, attention_positions)] if attention_positions else []))),
    ]


def graph_specs(input_shape: tuple[int, int, int], feature_shape: tuple, units: int, embedding_dim: int,
                vocab_size: int, attention: bool = False) -> list[GraphSpec]:
    """The three graphs of this project's InceptionV3 + LSTM captioner (`input_shape`: one image's);
    with `attention`, the features are a map [positions, channels] and the state carries its projection."""
    state = [StateSpec("h", "float32", (units,), True), StateSpec("c", "float32", (units,), True),
             StateSpec("context", "float32", (embedding_dim,), False)]
    if attention:
        state.append(StateSpec("memory", "float32", (feature_shape[0], embedding_dim), False))
    return decoder_specs(input_shape, feature_shape, vocab_size, state, feature_shape[0] if attention else 0)

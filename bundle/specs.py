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

BATCH = "batch"  # the dynamic axis name written into every graph
GRAPH_ROLES = ("encoder", "decoder_init", "decoder_step")
NEXT = "_next"   # suffix of a state tensor's updated value in the step graph's outputs

# key -> ONNX tensor name. ONNX names are unique in a graph, so the new state is h_next/c_next.
TENSOR_NAMES = {key: key for key in ("image", "features", "h", "c", "context", "token", "log_probs", "h_next",
                                     "c_next")}


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
    return TensorSpec(key, TENSOR_NAMES[key], dtype, (BATCH, *shape))


@dataclass(frozen=True)
class GraphSpec:
    role: str                   # one of GRAPH_ROLES
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    atol: float = 1e-4          # accepted |ONNX - Keras| <= atol + rtol * |Keras| (numpy.allclose)
    rtol: float = 1e-4

    @property
    def onnx_file(self) -> str:
        return f"{self.role}.onnx"

    @property
    def optimized_file(self) -> str:
        return f"{self.role}.opt.onnx"


def graph_specs(input_shape: tuple[int, int, int], feature_dim: int, units: int, embedding_dim: int,
                vocab_size: int) -> list[GraphSpec]:
    """The three graphs of an InceptionV3 + LSTM captioner; `input_shape` is one image's, without the batch axis."""
    f32 = "float32"
    return [
        GraphSpec("encoder", (tensor("image", f32, *input_shape),), (tensor("features", f32, feature_dim),)),
        GraphSpec("decoder_init", (tensor("features", f32, feature_dim),),
                  (tensor("h", f32, units), tensor("c", f32, units), tensor("context", f32, embedding_dim))),
        GraphSpec("decoder_step",
                  (tensor("token", "int32", 1), tensor("h", f32, units), tensor("c", f32, units),
                   tensor("context", f32, embedding_dim)),
                  (tensor("log_probs", f32, vocab_size), tensor("h_next", f32, units),
                   tensor("c_next", f32, units))),
    ]

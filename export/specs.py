"""Export facts as data: one spec per exported graph (names, dtypes, shapes, tolerance).

The exporter converts and checks against these specs, and they are written into the bundle
manifest, which is what the server validates its onnxruntime sessions against.
"""
from __future__ import annotations

from dataclasses import dataclass

BATCH = "batch"  # the dynamic axis name written into every graph


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str          # numpy dtype name
    shape: tuple        # BATCH for the dynamic batch axis, ints elsewhere

    def as_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    role: str                   # encoder | decoder_init | decoder_step
    keras_file: str             # in the training run folder
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


def graph_specs(run: dict) -> list[GraphSpec]:
    """The three graphs of a trained run, shaped by its run.json."""
    height, width = run["preprocessing"]["resize"][1], run["preprocessing"]["resize"][0]
    features = run["encoder"]["feature_dim"]
    units, embedding = run["decoder"]["units"], run["decoder"]["embedding_dim"]
    vocab = run["decoder"]["vocab_size"]
    f32 = "float32"
    return [
        GraphSpec("encoder", "encoder.keras",
                  (TensorSpec("image", f32, (BATCH, height, width, 3)),),
                  (TensorSpec("features", f32, (BATCH, features)),)),
        GraphSpec("decoder_init", "decoder_init.keras",
                  (TensorSpec("features", f32, (BATCH, features)),),
                  (TensorSpec("h", f32, (BATCH, units)), TensorSpec("c", f32, (BATCH, units)),
                   TensorSpec("context", f32, (BATCH, embedding)))),
        GraphSpec("decoder_step", "decoder_step.keras",
                  (TensorSpec("token", "int32", (BATCH, 1)), TensorSpec("h", f32, (BATCH, units)),
                   TensorSpec("c", f32, (BATCH, units)), TensorSpec("context", f32, (BATCH, embedding))),
                  # ONNX names are unique in a graph, so the new state is h_next/c_next.
                  (TensorSpec("log_probs", f32, (BATCH, vocab)), TensorSpec("h_next", f32, (BATCH, units)),
                   TensorSpec("c_next", f32, (BATCH, units)))),
    ]

"""Keras -> ONNX with tf2onnx, named and shaped as the graph spec says, plus an
onnxruntime-optimised copy."""
from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from bundle.specs import BATCH, GraphSpec

OPSET = 17


def _rename_outputs(model: onnx.ModelProto, names: list[str]) -> None:
    """tf2onnx names outputs after Keras tensors; give them the spec's names instead."""
    graph = model.graph
    renames = {out.name: new for out, new in zip(graph.output, names)}
    for node in graph.node:
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.input[:] = [renames.get(n, n) for n in node.input]
    for out in graph.output:
        out.name = renames[out.name]


def _set_shapes(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Name the batch axis and write the spec's fixed sizes, which tf2onnx may leave unknown
    (an attention decoder's memory comes out as [batch, ?, A])."""
    shapes = {t.name: t.shape for t in spec.inputs + spec.outputs}
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, shapes[value.name]):
            if size == BATCH:
                dim.ClearField("dim_value")
                dim.dim_param = BATCH
            else:
                dim.ClearField("dim_param")
                dim.dim_value = size


def _erfc(ctx, node, name, args):
    """TensorFlow's Erfc (Keras' exact gelu) as 1 - Erf: ONNX has Erf and no Erfc, and tf2onnx
    leaves the node as it is, which no runtime can load."""
    import numpy as np
    from tf2onnx import utils

    erf = ctx.make_node("Erf", [node.input[0]])
    one = ctx.make_const(utils.make_name("one"), np.array(1, dtype=utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])


CUSTOM_OP_HANDLERS = {"Erfc": (_erfc, [])}


def convert(keras_model, spec: GraphSpec, opset: int = OPSET) -> onnx.ModelProto:
    """Convert one Keras model to ONNX whose inputs and outputs match `spec` exactly."""
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec([None, *t.shape[1:]], getattr(tf, t.dtype), name=t.name) for t in spec.inputs]
    model, _ = tf2onnx.convert.from_keras(keras_model, input_signature=signature, opset=opset,
                                          custom_op_handlers=CUSTOM_OP_HANDLERS)
    if len(model.graph.output) != len(spec.outputs):
        raise RuntimeError(f"{spec.role}: converter produced {len(model.graph.output)} outputs, "
                           f"spec has {len(spec.outputs)}")
    _rename_outputs(model, [t.name for t in spec.outputs])
    _set_shapes(model, spec)
    model.doc_string = f"{spec.role} of an image-captioning model (InceptionV3 + LSTM)"
    onnx.checker.check_model(model)
    return model


def optimize(source: Path, target: Path) -> None:
    """Write onnxruntime's optimised graph. Extended (not 'all') level: the result stays portable
    across CPUs, since layout-specific rewrites are left for load time."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])

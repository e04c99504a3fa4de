"""Keras -> ONNX with tf2onnx, named and shaped as the graph spec says, plus an
onnxruntime-optimised copy."""
from __future__ import annotations

import gc
from collections import OrderedDict
from pathlib import Path

import onnx
import onnxruntime as ort

from bundle.specs import BATCH, GraphSpec, TensorSpec

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


def _rename_inputs(model: onnx.ModelProto, names: list[str]) -> None:
    """A graph converted from a GraphDef names its inputs "image:0"; give them the spec's names."""
    graph = model.graph
    renames = {value.name: new for value, new in zip(graph.input, names)}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
    for value in graph.input:
        value.name = renames[value.name]


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
    """Convert one Keras model to ONNX whose inputs and outputs match `spec` exactly. An encoder
    that ends in large Dense layers (VGG16's fc1 and fc2: 120 M parameters) has them appended as
    plain ONNX MatMul/Add/Relu nodes: tf2onnx freezes, optimises and copies such weights many times
    over (past 24 GB for VGG16), and these few nodes need none of that."""
    import tensorflow as tf
    import tf2onnx

    tail = dense_tail(keras_model)
    if tail:
        import keras

        trunk_output = TensorSpec("trunk_output", "trunk_output", "float32", (BATCH, int(tail[0].input.shape[-1])))
        converted, converted_spec = keras.Model(keras_model.inputs, tail[0].input), GraphSpec(
            spec.role, spec.inputs, (trunk_output,))
    else:
        converted, converted_spec = keras_model, spec
    signature = [tf.TensorSpec([None, *t.shape[1:]], getattr(tf, t.dtype), name=t.name) for t in spec.inputs]
    large = converted.count_params() >= COLLECTED_FROM_PARAMETERS
    model, _ = tf2onnx.convert.from_keras(converted, input_signature=signature, opset=opset,
                                          custom_op_handlers=CUSTOM_OP_HANDLERS,
                                          optimizers=collected_optimizers() if large else None)
    if len(model.graph.output) != len(converted_spec.outputs):
        raise RuntimeError(f"{spec.role}: converter produced {len(model.graph.output)} outputs, "
                           f"spec has {len(converted_spec.outputs)}")
    _rename_outputs(model, [t.name for t in converted_spec.outputs])
    # Checked before the tail joins: the checker serialises the whole model, a copy of every weight.
    onnx.checker.check_model(model)
    if tail:
        _append_dense_tail(model, tail, spec.outputs[0].name)
    _set_shapes(model, spec)
    model.doc_string = f"{spec.role} of an image-captioning model (InceptionV3 + LSTM)"
    return model


class _Collected:
    """An optimizer factory that first collects the garbage. tf2onnx deep-copies the whole graph,
    constants included, before each of its optimizers (to restore it if one fails); the graphs it
    drops hold reference cycles, so each copy lived until Python's cyclic collector ran: twelve
    optimizers a pass, several passes, VGG16's 553 MB each."""

    def __init__(self, factory):
        self.factory = factory

    def __call__(self):
        gc.collect()
        return self.factory()


# Each collection walks the whole heap (5 s a conversion where TensorFlow and Keras are loaded), so
# only graphs whose copies would cost more than that are collected: 10 M parameters, 40 MB a copy.
COLLECTED_FROM_PARAMETERS = 10_000_000


def collected_optimizers():
    """tf2onnx's own optimizers, in its order, each collecting the previous copies first."""
    from tf2onnx import optimizer

    return OrderedDict((name, _Collected(factory)) for name, factory in optimizer._get_optimizers().items())


def convert_function(function, spec: GraphSpec, opset: int = OPSET) -> onnx.ModelProto:
    """Convert a TensorFlow function of the spec's inputs (in order) to ONNX whose inputs and
    outputs match `spec`: the graphs of a model defined by its notebook's code."""
    import tensorflow as tf
    import tf2onnx

    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    signature = [tf.TensorSpec([None, *t.shape[1:]], getattr(tf, t.dtype), name=t.name) for t in spec.inputs]
    # Frozen here rather than by from_function, whose own freezing loses constants that Keras
    # layers create at call time (EfficientNet's Normalization: "KeyError .../Sub/y:0").
    frozen = convert_variables_to_constants_v2(tf.function(function).get_concrete_function(*signature),
                                               lower_control_flow=False, aggressive_inlining=True)
    model, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(), input_names=[t.name for t in frozen.inputs if t.dtype != tf.resource],
        output_names=[t.name for t in frozen.outputs], opset=opset, custom_op_handlers=CUSTOM_OP_HANDLERS)
    if len(model.graph.output) != len(spec.outputs):
        raise RuntimeError(f"{spec.role}: converter produced {len(model.graph.output)} outputs, "
                           f"spec has {len(spec.outputs)}")
    _rename_outputs(model, [t.name for t in spec.outputs])
    _rename_inputs(model, [t.name for t in spec.inputs])
    _set_shapes(model, spec)
    model.doc_string = f"{spec.role} of an image-captioning model defined by its notebook's code"
    onnx.checker.check_model(model)
    return model


# A tail of Dense layers is appended as ONNX nodes when it holds at least this many parameters
# (VGG16's fc1 + fc2: 119.5 M); smaller ones convert through tf2onnx as before.
LARGE_DENSE_TAIL = 32_000_000
DENSE_ACTIVATIONS = {"linear": None, "relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}


def dense_tail(keras_model) -> list:
    """The Dense layers (with a plain activation) that end `keras_model` in a chain, oldest first,
    when their parameters reach LARGE_DENSE_TAIL; [] otherwise."""
    import keras

    if len(keras_model.outputs) != 1:
        return []
    tail, tensor = [], keras_model.outputs[0]
    while True:
        layer, node_index, _ = tensor._keras_history
        activation = getattr(getattr(layer, "activation", None), "__name__", None)
        if not (isinstance(layer, keras.layers.Dense) and activation in DENSE_ACTIVATIONS
                and len(layer._inbound_nodes) == 1 and len(layer.input.shape) == 2):
            break
        tail.insert(0, layer)
        tensor = layer.input
    if tensor is keras_model.inputs[0] or sum(layer.count_params() for layer in tail) < LARGE_DENSE_TAIL:
        return []
    return tail


def _append_dense_tail(model: onnx.ModelProto, tail: list, output_name: str) -> None:
    """Append `tail` (Dense layers) after the graph's one output, whose name becomes `output_name`."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    current = graph.output[0].name
    for number, layer in enumerate(tail):
        last = number == len(tail) - 1
        prefix = f"dense_tail_{number}"
        graph.initializer.append(numpy_helper.from_array(np.asarray(layer.kernel, np.float32), f"{prefix}_kernel"))
        nodes = [helper.make_node("MatMul", [current, f"{prefix}_kernel"], [f"{prefix}_matmul"])]
        if layer.use_bias:
            graph.initializer.append(numpy_helper.from_array(np.asarray(layer.bias, np.float32), f"{prefix}_bias"))
            nodes.append(helper.make_node("Add", [nodes[-1].output[0], f"{prefix}_bias"], [f"{prefix}_biased"]))
        activation = DENSE_ACTIVATIONS[layer.activation.__name__]
        if activation:
            nodes.append(helper.make_node(activation, [nodes[-1].output[0]], [f"{prefix}_{activation.lower()}"]))
        if last:
            nodes[-1].output[0] = output_name
        graph.node.extend(nodes)
        current = nodes[-1].output[0]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output_name, onnx.TensorProto.FLOAT, [BATCH, tail[-1].units]))


def optimize(source: Path, target: Path) -> None:
    """Write onnxruntime's optimised graph. Extended (not 'all') level: the result stays portable
    across CPUs, since layout-specific rewrites are left for load time."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])

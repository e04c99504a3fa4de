"""Keras -> ONNX conversion details: a large Dense tail (VGG16's fc1 and fc2) is appended as plain
ONNX nodes and computes what Keras does; tf2onnx's optimizers all run, in its order."""
import numpy as np
import pytest

from bundle.specs import GraphSpec, tensor

pytestmark = pytest.mark.slow


def small_vgg_like(activation: str = "relu"):
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(image)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(24, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(12, activation=activation, name="fc2")(x)
    return keras.Model(image, x)


def test_a_large_dense_tail_is_appended_as_onnx_nodes_and_computes_what_keras_does(monkeypatch):
    import onnxruntime as ort

    from export import convert

    model = small_vgg_like()
    assert convert.dense_tail(model) == []          # small: converted by tf2onnx as before
    monkeypatch.setattr(convert, "LARGE_DENSE_TAIL", 0)
    assert [layer.name for layer in convert.dense_tail(model)] == ["fc1", "fc2"]
    spec = GraphSpec("encoder", (tensor("image", "float32", 16, 16, 3),), (tensor("features", "float32", 12),))
    onnx_model = convert.convert(model, spec)
    produced = {out: node.op_type for node in onnx_model.graph.node for out in node.output}
    assert produced["dense_tail_0_matmul"] == produced["dense_tail_1_matmul"] == "MatMul"
    assert produced["features"] == "Relu"
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    got = session.run(["features"], {"image": images})[0]
    np.testing.assert_allclose(got, np.asarray(model(images)), atol=1e-5)
    assert [d.dim_param or d.dim_value for d in onnx_model.graph.output[0].type.tensor_type.shape.dim] == ["batch", 12]


def test_a_tail_ending_in_softmax_is_left_to_tf2onnx(monkeypatch):
    from export import convert

    monkeypatch.setattr(convert, "LARGE_DENSE_TAIL", 0)
    assert convert.dense_tail(small_vgg_like("softmax")) == []


def test_every_tf2onnx_optimizer_runs_in_its_order():
    from tf2onnx import optimizer

    from export.convert import collected_optimizers

    assert list(collected_optimizers()) == list(optimizer._get_optimizers())

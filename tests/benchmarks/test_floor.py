import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks.floor import count_flops, sgemm_peak_gflops


def test_flops_of_a_known_graph(tmp_path):
    weight = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    dense = numpy_helper.from_array(np.zeros((8, 5), np.float32), "d")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["y"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "d"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 10, 10])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 5])], [weight, dense])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert count_flops(path) == {"Conv": 2 * 8 * 3 * 3 * 3 * 10 * 10, "MatMul": 2 * 8 * 5}


def test_sgemm_peak_is_a_plausible_rate():
    assert 1 < sgemm_peak_gflops(size=512, repeats=3) < 100_000

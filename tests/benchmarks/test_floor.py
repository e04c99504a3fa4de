import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import pytest

from benchmarks.floor import count_flops, openvino_matmul_peak_gflops, precision_floors, sgemm_peak_gflops
from server.openvino_encoder import OpenVINOUnavailable, openvino_capabilities


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


def test_openvino_peaks_per_precision_are_plausible_rates_or_refused():
    for precision in ("f32", "int8"):
        assert 1 < openvino_matmul_peak_gflops(precision, size=256, repeats=2) < 100_000
    if "BF16" in openvino_capabilities():
        assert 1 < openvino_matmul_peak_gflops("bf16", size=256, repeats=2) < 100_000
    else:  # a processor without bf16 says so instead of measuring f32 under another name
        with pytest.raises(OpenVINOUnavailable, match="no bf16"):
            openvino_matmul_peak_gflops("bf16", size=256, repeats=2)
    floors = precision_floors(2e9, size=256)
    assert {"f32", "int8"} <= set(floors) and ("bf16" in floors) == ("BF16" in openvino_capabilities())
    for figures in floors.values():  # the floor is the FLOPs over the peak, in ms
        assert figures["floor_ms"] == pytest.approx(2e9 / (figures["matmul_peak_gflops"] * 1e9) * 1e3, rel=0.02)


def test_without_bf16_the_bf16_floor_is_left_out(monkeypatch):
    import server.openvino_encoder as openvino_encoder

    monkeypatch.setattr(openvino_encoder, "openvino_capabilities", lambda: ["FP32", "INT8"])  # simulated
    with pytest.raises(OpenVINOUnavailable, match="no bf16"):
        openvino_matmul_peak_gflops("bf16", size=128, repeats=1)
    assert set(precision_floors(1e9, size=128)) == {"f32", "int8"}

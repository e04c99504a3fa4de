"""The compute floor: the encoder's FLOPs counted from its ONNX graph, divided by this
machine's single-precision matrix-multiply peak (numpy's BLAS sgemm), measured now; and, where
OpenVINO is installed, a floor per precision from its own matrix-multiply peaks (f32, bf16, int8),
since a bf16 or int8 path is bounded by what the processor does in that precision.

Usage: python -m benchmarks.floor [--bundle onnx_models/demo]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference


@dataclass(frozen=True)
class Effort:
    """How hard the peaks are measured: FULL for figures; QUICK (the scripts' --quick) to check in
    seconds that a script runs every step, as the tests do, with figures not worth keeping."""
    sgemm_size: int = 2048
    sgemm_repeats: int = 10
    openvino_matmul_size: int = 4096

    def sgemm_peak(self) -> float:
        return sgemm_peak_gflops(self.sgemm_size, self.sgemm_repeats)


FULL, QUICK = Effort(), Effort(sgemm_size=1024, sgemm_repeats=2, openvino_matmul_size=1024)


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Static shapes of every tensor with the batch axis set to 1."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 1
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            shapes[value.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(numpy_helper.to_array(init).shape)
    return shapes


def count_flops(path: Path) -> dict[str, float]:
    """Multiply-add FLOPs (2 per MAC) of Conv, MatMul and Gemm nodes for one image, by op type."""
    model = onnx.load(path)
    shapes = _shapes(model)
    totals: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight = shapes[node.input[1]]               # [Cout, Cin/group, kh, kw]
            out = shapes[node.output[0]]                 # [N, Cout, H, W]
            flops = 2 * np.prod(weight) * np.prod(out[2:]) * out[0]
        elif node.op_type in ("MatMul", "Gemm"):
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            flops = 2 * np.prod(a) * b[-1]
        else:
            continue
        totals[node.op_type] = totals.get(node.op_type, 0.0) + float(flops)
    return totals


def sgemm_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Best-of-n float32 matrix multiply rate through numpy's BLAS, in GFLOP/s, measured in a
    fresh process without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE: some machines set them to dodge
    old OpenBLAS bugs, and they pin a current OpenBLAS to slower kernels (about half the rate)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    out = subprocess.run([sys.executable, "-m", "benchmarks.sgemm", str(size), str(repeats)], env=env,
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def matmul_model(size: int, int8: bool) -> bytes:
    """An ONNX [size, size] x [size, size] MatMul; with `int8`, both operands quantised (QDQ), which
    OpenVINO runs as an int8 multiply (VNNI or AMX where the processor has them)."""
    from onnx import TensorProto, helper

    weights = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    if int8:
        initialisers = [numpy_helper.from_array(np.clip(weights * 20, -127, 127).astype(np.int8), "wq"),
                        numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
                        numpy_helper.from_array(np.array(0, np.int8), "zero"),
                        numpy_helper.from_array(np.array(0, np.uint8), "zero_u8")]
        nodes = [helper.make_node("QuantizeLinear", ["a", "scale", "zero_u8"], ["aq"]),
                 helper.make_node("DequantizeLinear", ["aq", "scale", "zero_u8"], ["ad"]),
                 helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["wd"]),
                 helper.make_node("MatMul", ["ad", "wd"], ["c"])]
    else:
        initialisers = [numpy_helper.from_array(weights, "w")]
        nodes = [helper.make_node("MatMul", ["a", "w"], ["c"])]
    graph = helper.make_graph(nodes, "matmul", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])], initialisers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def openvino_matmul_peak_gflops(precision: str, size: int = 4096, repeats: int = 6) -> float:
    """Best-of-n matrix multiply rate through OpenVINO's CPU plugin in `precision` (f32, bf16 or
    int8), GFLOP/s; OpenVINOUnavailable without the package, or for bf16 on a processor without it."""
    import tempfile

    from server.openvino_encoder import OpenVINOUnavailable, openvino_capabilities

    has_bf16 = "BF16" in openvino_capabilities()
    if precision == "bf16" and not has_bf16:
        raise OpenVINOUnavailable("this processor has no bf16 arithmetic for OpenVINO (no AVX512_BF16 or AMX)")
    import openvino as ov

    # int8 keeps the rest of the graph in the best float precision there is, as the serving path would.
    hint = "bf16" if precision == "bf16" or (precision == "int8" and has_bf16) else "f32"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "matmul.onnx"
        path.write_bytes(matmul_model(size, int8=precision == "int8"))
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                              "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    a = np.abs(np.random.default_rng(1).standard_normal((size, size))).astype(np.float32)
    request.infer({0: a})  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        request.infer({0: a})
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


def precision_floors(encoder_flops: float, size: int = 4096) -> dict:
    """OpenVINO's matrix-multiply peak and the encoder's floor in each precision this machine
    runs ({} without OpenVINO). Noisy on shared machines: compare only within one run."""
    from server.openvino_encoder import OpenVINOUnavailable

    floors = {}
    for precision in ("f32", "bf16", "int8"):
        try:
            peak = openvino_matmul_peak_gflops(precision, size)
        except OpenVINOUnavailable:
            continue
        floors[precision] = {"matmul_peak_gflops": round(peak, 1),
                             "floor_ms": round(encoder_flops / (peak * 1e9) * 1e3, 2)}
    return floors


@functools.lru_cache(maxsize=None)
def encoder_flops(bundle: Path) -> dict[str, float]:
    """count_flops of the bundle's encoder, counted once per process (the benchmarks ask per layout)."""
    manifest = json.loads((bundle / "bundle.json").read_text())
    return count_flops(bundle / manifest["graphs"]["encoder"]["file"])


def encoder_floor(bundle: Path, precisions: bool = False, effort: Effort = FULL) -> dict:
    """FLOPs, sgemm peak and the floor in ms for the bundle's encoder; with `precisions`, also
    the floor per precision through OpenVINO (`precision_floors`)."""
    flops = encoder_flops(bundle)
    peak = effort.sgemm_peak()
    total = sum(flops.values())
    floor = {"encoder_gflop": round(total / 1e9, 3), "by_op_gflop": {k: round(v / 1e9, 3) for k, v in flops.items()},
             "sgemm_peak_gflops": round(peak, 1), "floor_ms": round(total / (peak * 1e9) * 1e3, 2)}
    if precisions:
        floor["precisions"] = precision_floors(total, effort.openvino_matmul_size)
    return floor


def machine(effort: Effort = FULL) -> str:
    """The processor and its speed, as the benchmarks' results state them."""
    flags = set(open("/proc/cpuinfo").read().split()) if os.path.exists("/proc/cpuinfo") else set()
    features = ", ".join(sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")))
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"numpy sgemm peak {effort.sgemm_peak():.0f} GFLOP/s, {features or 'no AVX2'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"))
    args = parser.parse_args(argv)
    print(json.dumps(encoder_floor(args.bundle, precisions=True), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

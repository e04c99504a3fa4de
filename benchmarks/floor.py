"""The compute floor: the encoder's FLOPs counted from its ONNX graph, divided by this
machine's single-precision matrix-multiply peak (numpy's BLAS sgemm), measured now.

Usage: python -m benchmarks.floor [--bundle onnx_models/demo]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference


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
    code = f"from benchmarks.floor import _sgemm_rate; print(_sgemm_rate({size}, {repeats}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def _sgemm_rate(size: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


def encoder_floor(bundle: Path) -> dict:
    """FLOPs, sgemm peak and the floor in ms for the bundle's encoder."""
    manifest = json.loads((bundle / "bundle.json").read_text())
    flops = count_flops(bundle / manifest["graphs"]["encoder"]["file"])
    peak = sgemm_peak_gflops()
    total = sum(flops.values())
    return {"encoder_gflop": round(total / 1e9, 3), "by_op_gflop": {k: round(v / 1e9, 3) for k, v in flops.items()},
            "sgemm_peak_gflops": round(peak, 1), "floor_ms": round(total / (peak * 1e9) * 1e3, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"))
    args = parser.parse_args(argv)
    print(json.dumps(encoder_floor(args.bundle), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The encoder on the OpenVINO runtime, in bf16 where the processor computes it (AVX512_BF16, AMX).

onnxruntime's CPU provider computes in fp32 only on x86; OpenVINO compiles the same ONNX encoder
with bf16 inference precision, and runs an int8 variant's quantised operators in int8 (VNNI).
Measured on the demo encoder, batch 1, on a 2-core machine with AVX-512 BF16, VNNI and AMX, one
run: onnxruntime fp32 49.5 ms, OpenVINO bf16 27.0 ms, the int8 variant on OpenVINO 17.0 ms.
The decoder graphs stay on onnxruntime: they cost well under a millisecond a step.
"""
from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
PRECISIONS = ("bf16", "f32")


class OpenVINOUnavailable(RuntimeError):
    """OpenVINO is not installed, or this processor cannot compute in the precision asked for."""


def import_openvino():
    """The openvino module, without its usage telemetry: importing it otherwise starts a process that
    reports to Google Analytics unless the user opted out in ~/intel (a server records nothing about
    its use). Its converter falls back to a stub when openvino_telemetry cannot be imported."""
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def openvino_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin can compute in here (e.g. FP32, BF16, INT8); OpenVINOUnavailable without it."""
    try:
        ov = import_openvino()
    except ImportError:
        raise OpenVINOUnavailable("the openvino package is not installed (make install-openvino)") from None
    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVINOEncoder:
    """`encoder(images) -> features`, compiled once; each calling thread gets its own infer request."""

    def __init__(self, path: Path, image_name: str, features_name: str, precision: str = "bf16", threads: int = 0,
                 cache_dir: str = ""):
        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if "BF16" not in openvino_capabilities() and precision == "bf16":
            raise OpenVINOUnavailable("this processor has no bf16 arithmetic for OpenVINO (no AVX512_BF16 or AMX)")
        ov = import_openvino()  # openvino_capabilities has checked that it is installed

        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        if cache_dir:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        # From the file's path, so that OpenVINO can find the compiled model in its cache without reading the ONNX.
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.image_name, self.features_name, self.precision = image_name, features_name, precision
        self.output = self.compiled.output(features_name)
        self.requests = threading.local()

    @property
    def provider(self) -> str:
        """How the engine reports where its encoder runs."""
        return f"OpenVINO CPU {self.precision}"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        request = getattr(self.requests, "request", None)
        if request is None:
            request = self.requests.request = self.compiled.create_infer_request()
        result = request.infer({self.image_name: np.ascontiguousarray(images, dtype=np.float32)})
        return np.array(result[self.output], copy=True)  # the request reuses its output buffer

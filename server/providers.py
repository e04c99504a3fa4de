"""Choosing onnxruntime execution providers: what was asked for, what this install has."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
PROVIDER_OPTIONS = {
    "cuda": {"device_id": 0},
    # fp16 engines are cached on disk: building one takes minutes, loading it seconds.
    "tensorrt": {"device_id": 0, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                 "trt_engine_cache_path": "onnx_models/.trt_cache"},
}


class ProviderError(RuntimeError):
    """A requested provider is not available and strict mode forbids falling back."""


def resolve_providers(requested: list[str], available: list[str], strict: bool = False) -> list:
    """onnxruntime `providers` argument for the requested names, in order, CPU always last.

    Unavailable providers are dropped with a warning, or raise ProviderError when `strict`.
    """
    chosen, missing = [], []
    for name in requested:
        ort_name = ORT_NAMES[name]
        if ort_name not in available:
            missing.append(name)
        elif name != "cpu":
            chosen.append((ort_name, dict(PROVIDER_OPTIONS.get(name, {}))))
    if missing and missing != ["cpu"]:
        message = (f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
                   f"(available: {', '.join(available)})")
        if strict:
            raise ProviderError(message + "; install onnxruntime-gpu or set CAPTION_STRICT_PROVIDERS=0")
        log.warning("%s; falling back to %s", message, ", ".join([c[0] for c in chosen] + ["CPUExecutionProvider"]))
    return chosen + ["CPUExecutionProvider"]

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


def provider_name(provider) -> str:
    """The onnxruntime name of an entry of a `providers` list: a name, or (name, options)."""
    return provider[0] if isinstance(provider, tuple) else provider


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


def decoder_providers(providers: list) -> list:
    """The providers for the small decoder graphs: TensorRT left out, since it would build an
    engine for every new batch size of a graph that runs in well under a millisecond."""
    return [p for p in providers if provider_name(p) != ORT_NAMES["tensorrt"]]


def load_gpu_libraries() -> None:
    """Let onnxruntime-gpu find CUDA and cuDNN installed as pip packages (its `[cuda,cudnn]` extras);
    system-wide installs are found without this."""
    import onnxruntime

    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # a partial CUDA install must not stop a CPU fallback
        log.warning("could not preload CUDA libraries: %s", exc)


def check_active(chosen: list, active: list[str], strict: bool = False) -> None:
    """onnxruntime drops a provider whose libraries fail to load (CUDA without cuDNN, say) and runs
    on the CPU instead: say so, or raise ProviderError when `strict`."""
    dropped = [provider_name(p) for p in chosen if provider_name(p) not in active]
    if not dropped:
        return
    message = (f"{', '.join(dropped)} could not start (its CUDA/cuDNN libraries did not load) and the model "
               f"runs on {', '.join(active)}")
    if strict:
        raise ProviderError(message + "; see docs/performance.md#on-a-gpu, or set CAPTION_STRICT_PROVIDERS=0")
    log.warning(message)

import logging

import onnxruntime as ort
import pytest

from server.providers import ProviderError, resolve_providers

ON_THIS_MACHINE = ort.get_available_providers()
WITH_GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_cpu_only():
    assert resolve_providers(["cpu"], ON_THIS_MACHINE) == ["CPUExecutionProvider"]


def test_cuda_when_available_keeps_order_and_cpu_fallback():
    providers = resolve_providers(["tensorrt", "cuda", "cpu"], WITH_GPU)
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == WITH_GPU
    assert providers[0][1]["trt_fp16_enable"] is True


def test_missing_cuda_falls_back_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_providers(["cuda", "cpu"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert "cuda not available" in caplog.text


def test_missing_cuda_in_strict_mode_is_an_error():
    with pytest.raises(ProviderError, match="cuda not available"):
        resolve_providers(["cuda"], ["CPUExecutionProvider"], strict=True)

import logging

import onnxruntime as ort
import pytest

from server.providers import ProviderError, check_active, decoder_providers, load_gpu_libraries, resolve_providers

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


def test_decoder_graphs_skip_tensorrt_but_keep_cuda():
    providers = resolve_providers(["tensorrt", "cuda", "cpu"], WITH_GPU)
    assert [p[0] if isinstance(p, tuple) else p for p in decoder_providers(providers)] == WITH_GPU[1:]


def test_a_provider_that_fails_to_start_is_reported(caplog):
    chosen = resolve_providers(["cuda", "cpu"], WITH_GPU)
    with caplog.at_level(logging.WARNING):
        check_active(chosen, ["CPUExecutionProvider"])
    assert "CUDAExecutionProvider could not start" in caplog.text
    with pytest.raises(ProviderError, match="CUDAExecutionProvider could not start"):
        check_active(chosen, ["CPUExecutionProvider"], strict=True)
    check_active(chosen, ["CUDAExecutionProvider", "CPUExecutionProvider"], strict=True)  # started: silent


def test_gpu_library_preload_failure_only_warns(monkeypatch, caplog):
    def preload():
        raise OSError("libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(ort, "preload_dlls", preload, raising=False)
    with caplog.at_level(logging.WARNING):
        load_gpu_libraries()
    assert "libcudnn.so.9" in caplog.text

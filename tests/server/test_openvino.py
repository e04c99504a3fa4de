"""The encoder on OpenVINO: f32 gives onnxruntime's features, bf16 runs where the processor has it
and falls back (or refuses, under strict providers) where it does not, and its quality gate is
recorded in the bundle and logged at start-up."""
import json
import logging
import re
import shutil
import subprocess

import numpy as np
import pytest

from bundle.format import OPENVINO_BF16_PARITY, load_bundle
from bundle.preprocess import load_image
from server import openvino_encoder
from server.app import create_app
from server.config import Config, ConfigError
from server.engine import CaptionEngine, EngineOptions
from server.openvino_encoder import OpenVINOEncoder, OpenVINOUnavailable, openvino_capabilities
from server.providers import ProviderError
from tests.conftest import PYTHON, ROOT, run_cli

try:
    CAPABILITIES = openvino_capabilities()
except OpenVINOUnavailable:  # openvino not installed: every request for it falls back
    CAPABILITIES = None
HAS_BF16 = CAPABILITIES is not None and "BF16" in CAPABILITIES
CANNOT = "no bf16|not installed"


@pytest.fixture(scope="module")
def held_out(bundle_dir, trained_run):
    preprocessing = load_bundle(bundle_dir).preprocessing
    items = json.loads((trained_run / "heldout.json").read_text())[:8]
    return np.stack([load_image(item["image"], preprocessing) for item in items])


def openvino(bundle_dir, precision, strict=False):
    return CaptionEngine(load_bundle(bundle_dir), EngineOptions(providers=("openvino", "cpu"),
                                                                openvino_precision=precision, strict_providers=strict))


def test_f32_on_openvino_gives_onnxruntimes_features_and_captions(bundle_dir, held_out):
    plain, engine = CaptionEngine(load_bundle(bundle_dir)), openvino(bundle_dir, "f32")
    if CAPABILITIES is None:
        assert engine.active_providers == ["CPUExecutionProvider"]
        with pytest.raises(ProviderError, match="not installed"):
            openvino(bundle_dir, "f32", strict=True)
        return
    assert isinstance(engine.encoder, OpenVINOEncoder) and engine.active_providers[0] == "OpenVINO CPU f32"
    np.testing.assert_allclose(engine.encode(held_out), plain.encode(held_out), rtol=1e-4, atol=1e-4)
    assert [[h.tokens for h in b] for b in engine.caption(held_out, 3).hypotheses] == \
           [[h.tokens for h in b] for b in plain.caption(held_out, 3).hypotheses]


def test_bf16_runs_where_the_processor_has_it_and_falls_back_where_not(bundle_dir, held_out):
    engine = openvino(bundle_dir, "bf16")
    if HAS_BF16:
        assert engine.active_providers[0] == "OpenVINO CPU bf16"
        plain = CaptionEngine(load_bundle(bundle_dir)).encode(held_out)
        # bf16 keeps 8 bits of mantissa: the features move, by far less than they vary across images.
        assert np.abs(engine.encode(held_out) - plain).mean() < 0.1 * plain.std(0).mean()
    else:
        assert not isinstance(engine.encoder, OpenVINOEncoder)
        with pytest.raises(ProviderError, match=CANNOT):
            openvino(bundle_dir, "bf16", strict=True)


def test_a_processor_without_bf16_falls_back_with_a_warning_or_refuses_when_strict(bundle_dir, monkeypatch, caplog):
    monkeypatch.setattr(openvino_encoder, "openvino_capabilities", lambda: ["FP32", "INT8"])
    with caplog.at_level(logging.WARNING):
        engine = openvino(bundle_dir, "bf16")
    assert engine.active_providers == ["CPUExecutionProvider"]
    assert "no bf16 arithmetic" in caplog.text and "runs on onnxruntime" in caplog.text
    with pytest.raises(ProviderError) as info:
        openvino(bundle_dir, "bf16", strict=True)
    assert "\n" not in str(info.value) and "CAPTION_STRICT_PROVIDERS=0" in str(info.value)


@pytest.mark.parametrize("env, message", [
    ({"CAPTION_PROVIDERS": "cpu,openvino"}, "openvino runs the encoder only"),
    ({"CAPTION_PROVIDERS": "openvino,cpu", "CAPTION_OPENVINO_PRECISION": "int4"}, "openvino_precision='int4'"),
])
def test_openvino_settings_are_checked_at_start_up(env, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_env(env)


def test_the_quality_gate_is_recorded_and_logged(bundle_dir, trained_run, tmp_path, caplog):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    with caplog.at_level(logging.INFO):
        create_app(Config(bundle=bundle, providers="openvino,cpu", warmup=False))
    if not HAS_BF16:  # the server fell back; the check says why it cannot run here
        result = run_cli("export.openvino_check", "--bundle", str(bundle), "--run", str(trained_run), check=False)
        assert result.returncode == 2 and re.search(CANNOT, result.stderr.strip().splitlines()[-1])
        return
    assert "nobody checked" in caplog.text
    result = run_cli("export.openvino_check", "--bundle", str(bundle), "--run", str(trained_run), "--images", "16",
                     check=False)
    gate = json.loads((bundle / "bundle.json").read_text())["provenance"]["parity"][OPENVINO_BF16_PARITY]
    assert result.returncode == (0 if gate["passed"] else 1)
    assert gate["images"] == 16 and gate["metric"] == "objects_right_all" and gate["provider"] == "OpenVINO CPU bf16"
    assert gate["passed"] == (gate["fp32"] - gate["bf16"] <= gate["max_quality_loss"])
    load_bundle(bundle)  # still a valid bundle, checksums and all
    caplog.clear()
    with caplog.at_level(logging.INFO):
        create_app(Config(bundle=bundle, providers="openvino,cpu", warmup=False))
    assert "OpenVINO bf16 encoder, objects_right_all" in caplog.text


def test_without_openvino_installed_the_server_falls_back_or_refuses_when_strict(bundle_dir, monkeypatch):
    def not_installed():
        raise OpenVINOUnavailable("the openvino package is not installed (make install-openvino)")

    monkeypatch.setattr(openvino_encoder, "openvino_capabilities", not_installed)
    for precision in ("f32", "bf16"):
        assert openvino(bundle_dir, precision).active_providers == ["CPUExecutionProvider"]
        with pytest.raises(ProviderError, match="make install-openvino"):
            openvino(bundle_dir, precision, strict=True)


@pytest.mark.skipif(CAPABILITIES is None, reason="needs openvino, which requirements-dev.txt installs")
def test_compiled_encoders_are_cached_and_the_cached_one_gives_the_same_features(bundle_dir, held_out, tmp_path):
    cache = tmp_path / "openvino-cache"
    config = Config(bundle=bundle_dir, providers="openvino,cpu", openvino_precision="f32",
                    openvino_cache_dir=str(cache), warmup=False)
    first = CaptionEngine(load_bundle(bundle_dir), config.engine_options())
    assert any(cache.iterdir()), "OpenVINO wrote nothing to its cache"
    cached = CaptionEngine(load_bundle(bundle_dir), config.engine_options())
    np.testing.assert_array_equal(cached.encode(held_out), first.encode(held_out))


def test_an_unwritable_cache_folder_is_refused_at_start_up(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="openvino_cache_dir=.* is not a folder"):
        Config.from_env({"CAPTION_OPENVINO_CACHE_DIR": str(tmp_path / "a-file" / "cache")})


def test_an_int8_bundle_on_openvino_is_gated_against_its_float32_source(bundle_dir, int8_bundle_dir, trained_run,
                                                                         tmp_path):
    bundle = tmp_path / "int8"
    shutil.copytree(int8_bundle_dir, bundle)
    result = run_cli("export.openvino_check", "--bundle", str(bundle), "--reference", str(bundle_dir),
                     "--run", str(trained_run), "--images", "16", check=False)
    if not HAS_BF16:
        assert result.returncode == 2 and re.search(CANNOT, result.stderr.strip().splitlines()[-1])
        return
    gate = json.loads((bundle / "bundle.json").read_text())["provenance"]["parity"][OPENVINO_BF16_PARITY]
    assert result.returncode == (0 if gate["passed"] else 1), result.stderr
    assert gate["reference"] == load_bundle(bundle_dir).manifest["name"] and gate["images"] == 16
    source = json.loads((bundle_dir / "bundle.json").read_text())["provenance"]["parity"]
    assert OPENVINO_BF16_PARITY not in source  # the reference is read, never written


def test_the_server_starts_openvino_without_its_usage_telemetry(bundle_dir):
    """Importing openvino starts a process that reports usage to Google Analytics unless the user
    opted out; the server's import of it starts none, even compiling an encoder."""
    probe = ("import os, sys\n"
             "forks = []\n"
             "os.register_at_fork(after_in_parent=lambda: forks.append(1))\n"
             "from bundle.format import load_bundle\n"
             "from server.engine import CaptionEngine, EngineOptions\n"
             f"CaptionEngine(load_bundle({str(bundle_dir)!r}), EngineOptions(providers=('openvino', 'cpu'),"
             " openvino_precision='f32', strict_providers=True))\n"
             "import time; time.sleep(0.5)\n"
             "print(len(forks), sys.modules['openvino_telemetry'])\n")
    result = subprocess.run([PYTHON, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["0", "None"]

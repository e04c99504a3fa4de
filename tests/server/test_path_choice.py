"""The execution path chosen at start-up: candidates by machine and quality gate, the fastest by
alternating measurement, the choice kept per machine and shared by workers, and what a live
server says of it."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import requests

from bundle.format import ENCODER_VARIANTS, OPENVINO_BF16_PARITY, Bundle
from harness.server_process import GunicornServer
from server import path_choice
from server.config import Config, ConfigError
from server.path_choice import Machine, candidates, choose, fastest

ALL = Machine(("CUDAExecutionProvider", "CPUExecutionProvider"), ("FP32", "BF16", "INT8"))


def bundle_with(gate: dict | None = None, int8: dict | None = None) -> Bundle:
    """A bundle's manifest with the bf16 gate's figures, and an int8 encoder judged per runtime."""
    manifest = {"name": "m", "checksums": {"encoder.onnx": "sha256:0"}, "graphs": {"encoder": {"file": "encoder.onnx"}},
                "preprocessing": {"resize": [4, 4]}}
    if gate is not None:
        manifest["provenance"] = {"parity": {OPENVINO_BF16_PARITY: gate}}
    if int8 is not None:
        passed = any(f["passed"] for f in int8.values())
        manifest[ENCODER_VARIANTS] = {"int8": {"file": "encoder.int8.onnx" if passed else None, "quality": int8}}
    return Bundle(Path("/nowhere"), manifest, [])


PASSED = {"passed": True, "metric": "objects_right", "bf16": 0.93, "fp32": 0.93}
FAILED = {"passed": False, "metric": "objects_right", "bf16": 0.80, "fp32": 0.93}
INT8_PASSED = {"passed": True, "metric": "objects_right", "variant": 0.93, "float32": 0.93}
INT8_FAILED = {"passed": False, "metric": "objects_right", "variant": 0.91, "float32": 0.93}
BOTH = {"onnxruntime": INT8_PASSED, "openvino": INT8_PASSED}


def names(paths):
    return [p.name for p in paths]


def test_every_path_is_a_candidate_where_the_machine_runs_it_and_its_gates_passed():
    paths, dropped = candidates(bundle_with(PASSED, BOTH), ALL)
    assert names(paths) == ["onnxruntime fp32", "onnxruntime int8", "cuda", "openvino f32", "openvino bf16",
                            "openvino int8"] and dropped == {}
    int8 = next(p for p in paths if p.name == "openvino int8")
    assert int8.environment() == {"CAPTION_PROVIDERS": "openvino,cpu", "CAPTION_OPENVINO_PRECISION": "f32",
                                  "CAPTION_ENCODER_PRECISION": "int8"}
    by_hand = Config.from_env(int8.environment()).engine_options()
    assert (by_hand.providers, by_hand.openvino_precision, by_hand.encoder_precision) == (("openvino", "cpu"), "f32", "int8")


@pytest.mark.parametrize("machine, gate, int8, missing, reason", [
    (ALL, None, BOTH, ["openvino bf16"], "quality gate was not run"),
    (ALL, FAILED, BOTH, ["openvino bf16"], "failed its quality gate on this bundle (objects_right 0.8 against float32's 0.93)"),
    (Machine(("CPUExecutionProvider",), ("FP32", "INT8")), PASSED, BOTH, ["cuda", "openvino bf16"], "no bf16 arithmetic"),
    (Machine(("CPUExecutionProvider",), None), PASSED, BOTH, ["cuda", "openvino f32", "openvino bf16", "openvino int8"],
     "not installed"),
    (ALL, PASSED, None, ["onnxruntime int8", "openvino int8"], "carries no int8 encoder (python -m export.int8 --attach)"),
    (ALL, PASSED, {"onnxruntime": INT8_PASSED}, ["openvino int8"], "int8 encoder's quality gate was not run on openvino"),
    (ALL, PASSED, {"onnxruntime": INT8_PASSED, "openvino": INT8_FAILED}, ["openvino int8"],
     "its int8 encoder failed its quality gate on openvino (objects_right 0.91 against float32's 0.93)"),
    (ALL, PASSED, {"onnxruntime": INT8_FAILED}, ["onnxruntime int8", "openvino int8"], "was not run on openvino"),
])
def test_a_path_is_dropped_with_its_reason(machine, gate, int8, missing, reason):
    paths, dropped = candidates(bundle_with(gate, int8), machine)
    assert "onnxruntime fp32" in names(paths) and not set(missing) & set(names(paths))
    assert set(missing) <= set(dropped) and reason in dropped[missing[-1]]


def test_openvino_off_keeps_every_openvino_path_out_and_is_refused_beside_openvino_by_hand():
    paths, dropped = candidates(bundle_with(PASSED, BOTH), ALL, openvino=False)
    assert names(paths) == ["onnxruntime fp32", "onnxruntime int8", "cuda"]
    assert {dropped[n] for n in ("openvino f32", "openvino bf16", "openvino int8")} == {"CAPTION_OPENVINO=off"}
    assert Config.from_env({"CAPTION_OPENVINO": "off"}).openvino is False
    with pytest.raises(ConfigError, match="asks for OpenVINO, which openvino=off keeps out"):
        Config.from_env({"CAPTION_OPENVINO": "off", "CAPTION_PROVIDERS": "openvino,cpu"})


def test_fastest_alternates_rounds_and_takes_medians():
    order, clock = [], iter(range(1000))
    runners = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    assert fastest(runners, warm_up=1, rounds=3, clock=lambda: next(clock) / 1e3) == {"a": 1.0, "b": 1.0}
    assert order == ["a", "b", "a", "b", "a", "b", "a", "b"]  # warm-ups, then rounds that alternate


class FakeEngine:
    def __init__(self, path):
        self.path = path

    def encode(self, images):
        pass


def test_the_fastest_candidate_is_chosen_kept_and_taken_again_without_measuring(tmp_path, monkeypatch):
    measured_ms = {"onnxruntime fp32": 50.0, "openvino f32": 45.0, "openvino bf16": 27.0}
    calls = []
    monkeypatch.setattr(path_choice, "fastest", lambda runners: calls.append(set(runners)) or
                        {n: measured_ms[n] for n in runners})
    monkeypatch.setattr(path_choice, "cache_key", lambda *args: "key")
    built = []

    def make_engine(path):
        if path.name == "cuda":
            raise RuntimeError("CUDAExecutionProvider could not start\nmore")
        built.append(path.name)
        return FakeEngine(path)

    engine, choice = choose(bundle_with(PASSED), make_engine, 0, str(tmp_path), ALL)
    assert engine.path.name == choice.path.name == "openvino bf16"
    assert choice.dropped["cuda"] == "it could not start (CUDAExecutionProvider could not start)"
    assert choice.reason == ("27 ms per image in the encoder against onnxruntime fp32 50 ms, openvino f32 45 ms "
                             "(measured at start-up)")
    assert json.loads((tmp_path / "path-m-key.json").read_text()) == {"path": "openvino bf16", "encoder_ms": measured_ms}

    built.clear()
    engine, again = choose(bundle_with(PASSED), make_engine, 0, str(tmp_path), ALL)
    assert built == ["openvino bf16"] and len(calls) == 1  # the second start measured nothing
    assert again.timings_ms == measured_ms and again.source == "measured earlier on this machine"

    # A kept file that cannot be read is measured again.
    (tmp_path / "path-m-key.json").write_text('{"path": "openvino')
    _, again = choose(bundle_with(PASSED), make_engine, 0, str(tmp_path), ALL)
    assert again.source == "measured at start-up" and len(calls) == 2

    # A bundle whose gate has since failed never gets the kept path: the others are measured.
    engine, after = choose(bundle_with(FAILED), make_engine, 0, str(tmp_path), ALL)
    assert after.path.name == "openvino f32" and "openvino bf16" in after.dropped and len(calls) == 3


@pytest.fixture(scope="module")
def auto_server(bundle_dir, tmp_path_factory):
    """A server left to choose its path, as `make serve` starts it (the suite pins the others to onnxruntime)."""
    srv = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "CAPTION_PROVIDERS": "auto", "WEB_CONCURRENCY": "2",
                          "CAPTION_PATH_CACHE_DIR": str(tmp_path_factory.mktemp("path-cache"))})
    srv.wait_ready()
    yield srv
    srv.stop()


def test_a_live_server_says_which_path_it_chose_and_why(auto_server):
    server = auto_server
    model = requests.get(server.url + "/api/v1/model", timeout=10).json()
    path = model["execution_path"]
    assert path["path"] in path["encoder_ms"] and path["path"] in ("onnxruntime fp32", "openvino f32")
    assert path["encoder_ms"][path["path"]] <= (1 + path_choice.MARGIN) * min(path["encoder_ms"].values())
    bf16_here = "BF16" in path_choice.this_machine().openvino
    assert ("quality gate was not run" if bf16_here else "no bf16 arithmetic") in path["dropped"]["openvino bf16"]
    assert "no CUDA provider" in path["dropped"]["cuda"]
    metadata = requests.get(f"{server.url}/v2/models/{model['name']}", timeout=10).json()
    assert metadata["parameters"]["execution_path"] == path["path"]  # the reason's source differs by worker
    assert metadata["parameters"]["execution_path_reason"].split(" (")[0] == path["reason"].split(" (")[0]
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert re.search(r'caption_model_info\{[^}]*path="%s"' % re.escape(path["path"]), metrics)
    # Two workers, one measurement: the second took the first's.
    assert len(re.findall(r"encoder on %s: .* ms per image" % re.escape(path["path"]), server.output())) == 2
    assert server.output().count("(measured at start-up)") == 1


def test_onnxruntime_stays_unless_another_path_is_clearly_faster(tmp_path, monkeypatch):
    for other_ms, chosen in ((48.5, "onnxruntime fp32"), (47.0, "openvino f32")):  # a 5 % margin
        monkeypatch.setattr(path_choice, "fastest", lambda runners: {"onnxruntime fp32": 50.0, "openvino f32": other_ms})
        _, choice = choose(bundle_with(None), FakeEngine, 0, "", Machine(("CPUExecutionProvider",), ("FP32",)))
        assert choice.path.name == chosen


def test_a_cache_folder_that_cannot_be_written(tmp_path, monkeypatch, caplog):
    """Set by hand, it is refused at start-up; the default (a read-only home, say) is skipped with a warning."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="path_cache_dir='.*a-file/cache' is not a folder this process can"):
        Config(path_cache_dir=str(blocker / "cache"))
    monkeypatch.setattr(path_choice, "fastest", lambda runners: dict.fromkeys(runners, 1.0))
    _, choice = choose(bundle_with(None), FakeEngine, 0, str(blocker / "cache"), Machine(("CPUExecutionProvider",), None))
    assert choice.path.name == "onnxruntime fp32" and "measuring at every start" in caplog.text


def test_the_int8_encoder_a_bundle_carries_is_measured_and_can_be_set_by_hand(int8_attached_bundle_dir):
    from bundle.format import load_bundle
    from server.path_choice import engine_for

    bundle = load_bundle(int8_attached_bundle_dir)
    engine = engine_for(bundle, Config(bundle=int8_attached_bundle_dir, path_cache_dir=""))
    timings = engine.choice.timings_ms
    assert {"onnxruntime int8", "openvino int8"} <= set(timings) and engine.choice.path.name in timings
    assert timings[engine.choice.path.name] <= (1 + path_choice.MARGIN) * min(timings.values())
    assert engine.options.encoder_precision == engine.choice.path.encoder_precision
    by_hand = engine_for(bundle, Config(bundle=int8_attached_bundle_dir, providers="cpu", encoder_precision="int8"))
    assert by_hand.choice.path.name == "CPUExecutionProvider (int8 encoder)" and by_hand.choice.source == "set by CAPTION_PROVIDERS"
    image = np.random.default_rng(0).uniform(-1, 1, (1, *bundle.preprocessing["resize"], 3)).astype(np.float32)
    assert np.abs(by_hand.encode(image) - engine_for(bundle, Config(bundle=int8_attached_bundle_dir, providers="cpu"))
                  .encode(image)).max() > 0  # the int8 graph, not the float32 one


def test_int8_by_hand_needs_the_providers_set():
    with pytest.raises(ConfigError, match="encoder_precision='int8' needs CAPTION_PROVIDERS set"):
        Config(encoder_precision="int8")
    with pytest.raises(ConfigError, match=r"encoder_precision='int4' \(choose from float32, int8\)"):
        Config(providers="cpu", encoder_precision="int4")

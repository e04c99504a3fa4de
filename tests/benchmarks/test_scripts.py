"""The latency and HTTP benchmark scripts run end to end on the test bundle, and the summary
turns their results into the target table."""
import json

from benchmarks.http import openvino_bf16_available, openvino_capabilities_here
from tests.conftest import run_cli


def test_http_benchmark_and_summary(bundle_dir, int8_bundle_dir, tmp_path):
    run_cli("benchmarks.http", "--bundle", str(bundle_dir), "--int8", str(int8_bundle_dir), "--seconds", "0.3",
            "--quick", "--results", str(tmp_path))
    http = json.loads((tmp_path / "http.json").read_text())
    openvino, openvino_int8 = http.get("openvino_layouts", []), http.get("openvino_int8_layouts", [])
    assert (len(openvino), len(openvino_int8)) == ((2, 1) if openvino_bf16_available() else (0, 0))  # where bf16 is
    default = http["default_layout"]  # the server as make serve starts it, then the layouts set by hand
    no_openvino = http.get("no_openvino_layout")  # and again with CAPTION_OPENVINO=off where OpenVINO is installed
    defaults = [default, no_openvino] if openvino_capabilities_here() else [default]
    assert len(http["layouts"]) == len(defaults) + 4 + len(openvino) + len(openvino_int8) and len(http["int8_layouts"]) == 2
    assert list(http["layouts"])[:len(defaults)] == defaults and http["layouts"][default][0]["execution_path"]
    if no_openvino:
        assert not http["layouts"][no_openvino][0]["execution_path"].startswith("openvino")
    for points in http["layouts"].values():
        assert [p["concurrency"] for p in points] == [1, 8]  # --quick: the levels the targets name
        assert all(p["requests"] > 0 and p["server_errors_5xx"] == 0 and p["connection_errors"] == 0 for p in points)
        assert all(0 < p["client_cpu_ms_per_request"] < p["p50_ms"] for p in points)
    assert http["floor"]["floor_ms"] > 0

    printed = run_cli("benchmarks.summary", "--results", str(tmp_path)).stdout
    summary = (tmp_path / "summary.md").read_text()
    assert printed.strip() == summary.strip()
    assert set(http["floors"]) == set(http["layouts"])  # each layout against the floor measured just before it
    for points in http["layouts"].values():  # the targets' points against floors taken as they ran
        assert [p["concurrency"] for p in points if "paired" in p] == [1, 8]
        assert all(len(p["paired"]["chunks"]) == 4 and p["paired"]["p50_over_floor"] > 0 for p in points if "paired" in p)
    groups = [(f"as make serve starts it: {http['layouts'][default][0]['execution_path']}", [default]),
              ("fp32", set(http["layouts"]) - set(http["int8_layouts"]) - set(openvino) - set(openvino_int8) - set(defaults)),
              ("int8 encoder", http["int8_layouts"])]
    if no_openvino:
        groups.insert(1, (f"as make serve starts it with CAPTION_OPENVINO=off: "
                          f"{http['layouts'][no_openvino][0]['execution_path']}", [no_openvino]))
    if openvino:
        groups += [("bf16 encoder, OpenVINO", openvino), ("int8 encoder, OpenVINO", openvino_int8)]
    for precision, names in groups:
        single = min(http["layouts"][name][0]["paired"]["p50_over_floor"] for name in names)
        assert f"| single image over HTTP, p50 / floor ({precision}) | {single:.2f}x |" in summary
    assert summary.count("throughput at concurrency 8") == len(groups)
    check = http["int8_check"]
    assert (f"| int8 held-out {check['metric']} (fp32: {check['float32']:.1%}; greedy captions identical "
            f"{check['greedy_captions_identical']}) | {check['variant']:.1%} | within 1% of fp32 | "
            f"{'yes' if check['passed'] else 'NO'} |") in summary
    assert (tmp_path / "http.png").read_bytes()[:4] == b"\x89PNG"


def test_latency_benchmark_compares_onnxruntime_with_keras(bundle_dir, int8_bundle_dir, trained_run, tmp_path):
    run_cli("benchmarks.latency", "--bundle", str(bundle_dir), "--int8", str(int8_bundle_dir), "--run", str(trained_run),
            "--runs", "3", "--quick", "--results", str(tmp_path))
    latency = json.loads((tmp_path / "latency.json").read_text())
    assert "decoder_step" not in latency["onnxruntime_int8"]  # the variant's decoder is fp32's
    assert "int8 encoder:" in (tmp_path / "latency.md").read_text()
    for group in ("onnxruntime_fp32", "onnxruntime_int8", "keras_predict", "keras_tf_function"):
        assert latency[group]["caption_greedy"]["p50"] > 0
    assert latency["preprocess"]["jpeg_12mp"]["p50"] > latency["preprocess"]["jpeg_640x480"]["p50"]
    summary = run_cli("benchmarks.summary", "--results", str(tmp_path)).stdout
    assert "onnxruntime vs seed-style Keras predict loop" in summary and "onnxruntime vs tf.function Keras" in summary
    assert "greedy caption in-process (int8 encoder) / encoder floor" in summary
    on_openvino = [group for group in ("openvino_bf16", "openvino_int8") if group in latency]
    assert len(on_openvino) == (2 if openvino_bf16_available() else 0)
    for group in on_openvino:
        assert "decoder_step" not in latency[group] and latency[group]["encoder"]["p50"] > 0
    assert ("Encoder on OpenVINO against onnxruntime fp32" in (tmp_path / "latency.md").read_text()) == bool(on_openvino)


def test_latency_benchmark_steps_an_attention_decoder_in_keras_too(attention_bundle_dir, attention_run, tmp_path):
    run_cli("benchmarks.latency", "--bundle", str(attention_bundle_dir), "--int8", str(tmp_path / "none"),
            "--run", str(attention_run), "--runs", "2", "--quick", "--results", str(tmp_path))
    latency = json.loads((tmp_path / "latency.json").read_text())
    assert latency["keras_predict"]["caption_greedy"]["p50"] > latency["onnxruntime_fp32"]["caption_greedy"]["p50"]


def test_gpu_benchmark_runs_its_steps_and_refuses_without_cuda(bundle_dir, fp16_bundle_dir, trained_run, tmp_path):
    import onnxruntime as ort

    args = ["--bundle", str(bundle_dir), "--fp16", str(fp16_bundle_dir), "--run", str(trained_run),
            "--images", "8", "--runs", "1", "--batches", "1,8", "--results", str(tmp_path)]
    if "CUDAExecutionProvider" not in ort.get_available_providers():  # CI's machines; a GPU machine runs it below too
        refused = run_cli("benchmarks.gpu", *args, check=False)
        assert refused.returncode == 2 and "no CUDAExecutionProvider" in refused.stderr
    run_cli("benchmarks.gpu", *args, "--provider", "cpu")
    gpu = json.loads((tmp_path / "gpu.json").read_text())
    assert set(gpu["caption"]) == {"fp32, plain run", "fp32, fixed buffers", "fp16, plain run", "fp16, fixed buffers"}
    assert gpu["agreement_with_cpu_fp32"]["fp32, fixed buffers"] == "8/8"
    assert "| fp16, fixed buffers, batch 8 |" in (tmp_path / "gpu.md").read_text()


def test_layout_study_measures_every_layout(bundle_dir, tmp_path):
    run_cli("benchmarks.layouts", "--bundle", str(bundle_dir), "--seconds", "0.3", "--quick",
            "--results", str(tmp_path))
    study = json.loads((tmp_path / "layouts.json").read_text())
    from benchmarks.layouts import LAYOUTS
    assert list(study["layouts"]) == [name for name, _ in LAYOUTS]
    for entry in study["layouts"].values():
        assert [p["concurrency"] for p in entry["points"]] == [1, 8]
        assert all(p["requests"] > 0 and p["server_errors_5xx"] == 0 and p["connection_errors"] == 0
                   for p in entry["points"])
    assert "| 1 worker x 2 threads, spinning off, batching on |" in (tmp_path / "layouts.md").read_text()


def test_ray_batch_benchmark_compares_ray_with_the_one_process_command(bundle_dir, tmp_path):
    run_cli("benchmarks.ray_batch", "--bundle", str(bundle_dir), "--images", "24", "--results", str(tmp_path))
    results = json.loads((tmp_path / "ray_batch.json").read_text())
    run = results["runs"][0]
    assert run["images"] == 24 and run["rows_identical"] and run["captioned"] + run["skipped"] == 24
    assert run["ray"]["actors"] >= 1 and run["ray"]["images_per_s_once_started"] > 0
    assert run["ray_vs_single"] > 0 and "sgemm peak" in results["machine"]
    assert "| 24 |" in (tmp_path / "ray_batch.md").read_text()


def test_encoder_options_keep_one_entry_per_processor(bundle_dir, tmp_path):
    from benchmarks.encoder_options import VARIANTS, processor

    (tmp_path / "encoder_options.json").write_text(json.dumps({"processors": {"Another CPU (avx512f)": {
        "machine": "m", "rounds": 1, "sgemm_peaks_gflops": [100], "floor_ms": 1.0, "encoder_gflop": 0.1,
        "median_ms": {"default": 1.1}, "over_floor": {"default": 1.1}, "not_run": {}}}}))
    run_cli("benchmarks.encoder_options", "--bundle", str(bundle_dir), "--rounds", "1", "--quick",
            "--results", str(tmp_path))
    kept = json.loads((tmp_path / "encoder_options.json").read_text())["processors"]
    assert set(kept) == {"Another CPU (avx512f)", processor()}  # a run replaces only its own processor's entry
    run = kept[processor()]
    assert set(run["median_ms"]) | set(run["not_run"]) == {v.name for v in VARIANTS}
    assert all(len(times) == 1 and min(times) > 0 for times in run["ms_per_round"].values())
    assert run["over_floor"]["one thread"] > 0 and len(run["sgemm_peaks_gflops"]) == 1
    page = (tmp_path / "encoder_options.md").read_text()
    assert "## Another CPU (avx512f)" in page and f"## {processor()}" in page

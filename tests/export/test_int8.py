"""The int8 variant: a statically quantised encoder calibrated on held-out images it is not
judged on, with its held-out quality and caption agreement recorded, and served like any bundle."""
import json

import numpy as np
import onnx
import pytest

from bundle.format import MAX_QUALITY_LOSS, BundleError, load_bundle
from server.config import Config
from server.engine import CaptionEngine, EngineOptions
from tests.conftest import run_cli


def test_variant_manifest_records_precision_and_agreement(int8_bundle_dir, bundle_dir, trained_run):
    manifest = json.loads((int8_bundle_dir / "bundle.json").read_text())
    source = json.loads((bundle_dir / "bundle.json").read_text())
    assert manifest["precision"] == {"encoder": "int8", "decoder_init": "float32", "decoder_step": "float32"}
    assert manifest["provenance"]["variant_of"]["name"] == source["name"]
    figures = manifest["provenance"]["parity"]["int8_vs_fp32"]
    heldout = json.loads((trained_run / "heldout.json").read_text())
    assert figures["images"] == 8 and figures["calibration_images"] == min(8, len(heldout) - 8)
    assert figures["greedy_captions_identical"] == f"{round(figures['agreement'] * 8)}/8"
    assert 0 < figures["mean_abs_feature_diff"] <= figures["max_abs_feature_diff"]
    assert "int8" in manifest["description"] and manifest["tools"]["onnxruntime"]
    assert manifest["graphs"]["decoder_step"] == source["graphs"]["decoder_step"]


def test_encoder_is_quantised_per_channel(int8_bundle_dir, bundle_dir):
    model = onnx.load(str(int8_bundle_dir / "encoder.onnx"))
    ops = [n.op_type for n in model.graph.node]
    convs = ops.count("Conv")
    source_convs = [n.op_type for n in onnx.load(str(bundle_dir / "encoder.onnx")).graph.node].count("Conv")
    assert convs == source_convs > 0 and ops.count("QuantizeLinear") >= convs and ops.count("DequantizeLinear") >= 2 * convs
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.INT8 for t in weights)
    scales = {t.name: t for t in model.graph.initializer}
    weight_dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == weights[0].name)
    assert scales[weight_dq.input[1]].dims[0] == weights[0].dims[0]  # one scale per output channel
    assert (int8_bundle_dir / "encoder.onnx").stat().st_size < 0.35 * (bundle_dir / "encoder.onnx").stat().st_size


def test_the_server_captions_with_it(int8_bundle_dir, bundle_dir, shapes_dataset):
    from bundle.preprocess import load_image

    variant = CaptionEngine(load_bundle(int8_bundle_dir))
    source = CaptionEngine(load_bundle(bundle_dir))
    assert variant.bundle.summary()["precision"]["encoder"] == "int8"
    paths = sorted((shapes_dataset / "Images").glob("*.jpg"))[:4]
    images = np.stack([load_image(p, variant.preprocessing) for p in paths])
    want, got = source.encode(images), variant.encode(images)
    # Quantisation moves the features by a fraction of how much they vary across images (0.13 of
    # it measured on the held-out scenes: int8_vs_fp32's mean_abs_feature_diff / feature_spread).
    assert 0 < np.abs(got - want).mean() < 0.4 * want.std(0).mean()
    assert all(h[0].tokens for h in variant.caption(images).hypotheses)


def test_a_variant_that_loses_quality_is_not_written(bundle_dir, judged_by_its_own_captions, tmp_path):
    """The gate itself, with nothing patched: a quantised encoder broken on purpose is refused."""
    import export.int8 as int8
    import export.variant as variant

    from .conftest import broken_on_purpose

    with pytest.raises(variant.VariantError, match=r"int8 loses quality: held-out cider_d \S+ against float32's"):
        variant.make_variant(broken_on_purpose(int8.INT8), bundle_dir, judged_by_its_own_captions, tmp_path / "v", "v",
                             8, MAX_QUALITY_LOSS, ["CPUExecutionProvider"], calibration_images=8, log=lambda m: None)
    assert not (tmp_path / "v").exists() and not (tmp_path / "v.partial").exists()


def test_refuses_what_it_cannot_do_in_one_line(int8_bundle_dir, bundle_dir, trained_run, tmp_path):
    heldout = len(json.loads((trained_run / "heldout.json").read_text()))
    cases = [
        (["--bundle", str(bundle_dir), "--run", str(trained_run), "--calibration-images", "0"], 2, "--calibration-images"),
        (["--bundle", str(bundle_dir), "--run", str(trained_run), "--images", str(heldout)], 1, "none left to calibrate"),
        (["--bundle", str(int8_bundle_dir), "--run", str(trained_run)], 1, "already a variant (int8 encoder)"),
        (["--bundle", str(bundle_dir), "--run", str(trained_run), "--images", "8", "--calibration-images", "8",
          "--max-quality-loss", "1.0001"], 2, "--max-quality-loss"),
    ]
    for args, code, message in cases:
        result = run_cli("export.int8", *args, "--out", str(tmp_path / "out"), check=False)
        assert result.returncode == code, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "out").exists()


def test_a_variant_below_the_quality_gate_serves_with_a_warning(int8_bundle_dir, tmp_path, caplog):
    import logging
    import shutil

    from server.app import create_app

    bundle = tmp_path / "drifted"
    shutil.copytree(int8_bundle_dir, bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["provenance"]["parity"]["int8_vs_fp32"].update(float32=0.75, variant=0.654, passed=False,
                                                             agreement=0.5, greedy_captions_identical="4/8")
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        app = create_app(Config(bundle=bundle, warmup=False))
    assert "objects_right_all is 0.654 against its float32 source's 0.75 (greedy captions identical on 4/8)" in caplog.text
    summary = app.test_client().get("/api/v1/models").get_json()
    assert summary["models"][0]["quality_vs_float32"] == {"metric": "objects_right_all", "float32": 0.75, "variant": 0.654,
                                                          "passed": False, "greedy_captions_identical": "4/8"}


def test_attach_records_the_int8_encoder_in_the_bundle_judged_on_both_runtimes(int8_attached_bundle_dir, bundle_dir,
                                                                              shapes_dataset):
    from bundle.preprocess import load_image

    bundle = load_bundle(int8_attached_bundle_dir)  # checksums hold with the new file among them
    record = bundle.encoder_variant("int8")
    assert record["file"] == "encoder.int8.onnx" and record["precision"] == "int8" and record["tool"].startswith("nncf ")
    assert set(record["quality"]) == {"onnxruntime", "openvino"}
    for figures in record["quality"].values():
        assert figures["images"] == 8 and figures["passed"] and figures["metric"] == "objects_right_all"
    assert record["quality"]["openvino"]["provider"] == "OpenVINO CPU f32"
    assert record["quality"]["onnxruntime"]["calibration_images"] == 8
    # The float32 bundle is otherwise as it was: its own encoder, precision and figures.
    source = json.loads((bundle_dir / "bundle.json").read_text())
    assert bundle.manifest["graphs"] == source["graphs"] and bundle.manifest["provenance"] == source["provenance"]
    paths = sorted((shapes_dataset / "Images").glob("*.jpg"))[:4]
    images = np.stack([load_image(p, bundle.preprocessing) for p in paths])
    want = CaptionEngine(bundle).encode(images)
    got = CaptionEngine(bundle, EngineOptions(encoder_precision="int8")).encode(images)
    assert 0 < np.abs(got - want).mean() < 0.4 * want.std(0).mean()


def test_an_attached_encoder_that_loses_quality_is_recorded_and_not_kept(bundle_dir, judged_by_its_own_captions,
                                                                          tmp_path):
    """The gate of --attach, with nothing patched: the refusal's figures stay, so the server can say why."""
    import shutil

    import export.int8 as int8
    import export.variant as variant

    from .conftest import broken_on_purpose

    bundle = tmp_path / "b"
    shutil.copytree(bundle_dir, bundle)
    with pytest.raises(variant.VariantError, match=r"int8 loses quality: .*; recorded in .*, not attached"):
        variant.attach_variant(broken_on_purpose(int8.INT8), bundle, judged_by_its_own_captions, 8, MAX_QUALITY_LOSS,
                               ["CPUExecutionProvider"], calibration_images=8, log=lambda m: None)
    record = load_bundle(bundle).encoder_variant("int8")
    assert record["file"] is None and not record["quality"]["onnxruntime"]["passed"]
    assert sorted(p.name for p in bundle.iterdir()) == sorted(p.name for p in bundle_dir.iterdir())
    with pytest.raises(BundleError, match="no int8 encoder attached .it failed its quality gate."):
        CaptionEngine(load_bundle(bundle), EngineOptions(encoder_precision="int8"))

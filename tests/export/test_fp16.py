"""The fp16 variant: a float16 encoder behind float32 inputs and outputs, checked against its
source bundle before it is written, and served like any bundle."""
import json

import numpy as np
import onnx
import pytest

from bundle.format import MAX_QUALITY_LOSS, load_bundle
import export.fp16 as fp16
import export.variant as variant
from server.engine import CaptionEngine
from tests.conftest import run_cli


def test_variant_manifest_says_what_it_is(fp16_bundle_dir, bundle_dir, trained_run):
    manifest = json.loads((fp16_bundle_dir / "bundle.json").read_text())
    source = json.loads((bundle_dir / "bundle.json").read_text())
    assert manifest["precision"] == {"encoder": "float16", "decoder_init": "float32", "decoder_step": "float32"}
    assert manifest["provenance"]["variant_of"]["name"] == source["name"]
    assert "optimized_file" not in manifest["graphs"]["encoder"]
    assert manifest["provenance"]["parity"]["onnx"] == source["provenance"]["parity"]["onnx"]  # kept
    figures = manifest["provenance"]["parity"]["fp16_vs_fp32"]
    heldout = json.loads((trained_run / "heldout.json").read_text())
    assert figures["images"] == min(32, len(heldout))
    assert figures["greedy_captions_identical"] == f"{round(figures['agreement'] * figures['images'])}/{figures['images']}"
    assert figures["metric"] == "objects_right_all" and 0 <= figures["variant"] <= 1 and 0 <= figures["float32"] <= 1
    assert figures["passed"] == (figures["float32"] - figures["variant"] <= figures["max_quality_loss"])
    assert figures["providers"][0] == fp16.default_providers()[0]  # CUDA where there is one, else the CPU
    assert 0 < figures["max_abs_feature_diff"] < figures["feature_spread"]
    assert manifest["tools"]["onnxconverter-common"]
    assert manifest["graphs"]["decoder_step"] == source["graphs"]["decoder_step"]


def test_encoder_weights_are_float16_and_its_io_float32(fp16_bundle_dir, bundle_dir):
    model = onnx.load(str(fp16_bundle_dir / "encoder.onnx"))
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert (fp16_bundle_dir / "encoder.onnx").stat().st_size < 0.6 * (bundle_dir / "encoder.onnx").stat().st_size


def test_the_server_loads_and_captions_with_it(fp16_bundle_dir, bundle_dir, shapes_dataset):
    """float16 moves the features by far less than they vary across images; whether a greedy
    caption of a 6-epoch model then changes depends on the processor, so it is not asserted."""
    from bundle.preprocess import load_image

    variant = CaptionEngine(load_bundle(fp16_bundle_dir))
    source = CaptionEngine(load_bundle(bundle_dir))
    assert variant.bundle.summary()["precision"]["encoder"] == "float16"
    paths = sorted((shapes_dataset / "Images").glob("*.jpg"))[:4]
    images = np.stack([load_image(p, variant.preprocessing) for p in paths])
    want, got = source.encode(images), variant.encode(images)
    assert 0 < np.abs(got - want).mean() < 0.1 * want.std(0).mean()
    assert all(h[0].tokens for h in variant.caption(images).hypotheses)


def test_a_variant_that_loses_quality_is_not_written(bundle_dir, judged_by_its_own_captions, tmp_path):
    """The gate itself, with nothing patched: an encoder broken on purpose captions otherwise,
    loses held-out quality, and is refused with nothing written."""
    from .conftest import broken_on_purpose

    with pytest.raises(variant.VariantError, match=r"fp16 loses quality: held-out cider_d \S+ against float32's") as info:
        variant.make_variant(broken_on_purpose(fp16.FP16), bundle_dir, judged_by_its_own_captions, tmp_path / "v", "v",
                             16, MAX_QUALITY_LOSS, ["CPUExecutionProvider"], log=lambda m: None)
    print(info.value)
    assert not (tmp_path / "v").exists() and not (tmp_path / "v.partial").exists()


def test_a_variant_within_the_gate_is_written(bundle_dir, trained_run, tmp_path, monkeypatch):
    scores = iter([0.5, 0.495])
    monkeypatch.setattr(variant, "quality", lambda captions, heldout, scenes: ("objects_right_all", next(scores)))
    manifest = fp16.make_variant(bundle_dir, trained_run, tmp_path / "v", "v", 8, MAX_QUALITY_LOSS,
                                 ["CPUExecutionProvider"], log=lambda m: None)
    assert manifest["provenance"]["parity"]["fp16_vs_fp32"]["passed"] is True
    assert load_bundle(tmp_path / "v").summary()["quality_vs_float32"]["variant"] == 0.495


def test_refuses_bad_arguments_in_one_line(fp16_bundle_dir, bundle_dir, trained_run, tmp_path):
    cases = [
        (["--bundle", str(tmp_path), "--run", str(trained_run)], 2, "has no bundle.json"),
        (["--bundle", str(bundle_dir), "--run", str(tmp_path)], 2, "has no heldout.json"),
        (["--bundle", str(bundle_dir), "--run", str(trained_run), "--max-quality-loss", "2"], 2, "--max-quality-loss"),
        (["--bundle", str(fp16_bundle_dir), "--run", str(trained_run)], 1, "already a variant (float16 encoder)"),
    ]
    for args, code, message in cases:
        result = run_cli("export.fp16", *args, "--out", str(tmp_path / "out"), check=False)
        assert result.returncode == code, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr

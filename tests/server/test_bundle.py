"""Loading bundles, and refusing missing, corrupt or mismatched ones with one clear line."""
import json
import shutil

import pytest

from server.bundle import BundleError, load_bundle
from server.config import Config
from server.engine import CaptionEngine


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    return copy


def edit_manifest(path, change):
    manifest = json.loads((path / "bundle.json").read_text())
    change(manifest)
    (path / "bundle.json").write_text(json.dumps(manifest))


def test_loads_a_good_bundle(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.words[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert bundle.summary()["encoder_weights_random"] is True
    assert bundle.graph_file("encoder").name == "encoder.opt.onnx"
    assert bundle.graph_file("encoder", optimized=False).name == "encoder.onnx"


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="bundle.json missing"):
        load_bundle(tmp_path / "nothing")


def test_truncated_graph_fails_its_checksum(bundle_copy):
    graph = bundle_copy / "decoder_step.opt.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    with pytest.raises(BundleError, match="decoder_step.opt.onnx does not match its checksum"):
        load_bundle(bundle_copy)


def test_missing_file(bundle_copy):
    (bundle_copy / "vocab.json").unlink()
    with pytest.raises(BundleError, match="vocab.json listed in bundle.json is missing"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(format="other/9"), "format 'other/9'"),
    (lambda m: m.pop("max_length"), "missing max_length"),
    (lambda m: m["vocabulary"].update(size=5), "vocabulary has"),
])
def test_bad_manifest(bundle_copy, change, message):
    edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_not_json(bundle_copy):
    (bundle_copy / "bundle.json").write_text("{oops")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_graph_that_does_not_match_the_manifest(bundle_copy):
    def rename_input(m):
        m["graphs"]["decoder_step"]["inputs"][0]["name"] = "word"
    edit_manifest(bundle_copy, rename_input)
    with pytest.raises(BundleError, match="decoder_step graph inputs"):
        CaptionEngine(load_bundle(bundle_copy), Config(bundle=bundle_copy))


def test_unloadable_graph_is_a_bundle_error(bundle_copy):
    (bundle_copy / "encoder.opt.onnx").write_bytes(b"not onnx")
    bundle = load_bundle(bundle_copy, verify_checksums=False)
    with pytest.raises(BundleError, match="onnxruntime cannot load it"):
        CaptionEngine(bundle, Config(bundle=bundle_copy, verify_checksums=False))

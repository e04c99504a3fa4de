"""Loading bundles, and refusing missing, corrupt or mismatched ones with one clear line."""
import json
import shutil

import numpy as np
import pytest

from bundle.format import FORMAT, BundleError, finish, load_bundle, staged_bundle
from bundle.preprocess import input_shape, load_image
from server.engine import CaptionEngine, EngineOptions


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
        CaptionEngine(load_bundle(bundle_copy))


def test_unloadable_graph_is_a_bundle_error(bundle_copy):
    (bundle_copy / "encoder.opt.onnx").write_bytes(b"not onnx")
    bundle = load_bundle(bundle_copy, verify_checksums=False)
    with pytest.raises(BundleError, match="onnxruntime cannot load it"):
        CaptionEngine(bundle, EngineOptions())


def test_a_bundle_of_the_previous_format_is_read_and_served(bundle_copy):
    def to_version_1(m):
        m["format"] = "caption-bundle/1"
        for graph in m["graphs"].values():
            for entry in graph["inputs"] + graph["outputs"]:
                del entry["key"]
    edit_manifest(bundle_copy, to_version_1)
    bundle = load_bundle(bundle_copy)
    assert bundle.manifest["format"] == FORMAT
    result = CaptionEngine(bundle).caption(np.zeros((1, *input_shape(bundle.preprocessing)), np.float32))
    assert len(result.hypotheses) == 1


@pytest.mark.parametrize("found, message", [
    ("caption-bundle/3", "newer than this code reads"),
    ("onnx-model/1", "is not a caption bundle"),
])
def test_other_formats_get_one_line_saying_what_to_do(bundle_copy, found, message):
    edit_manifest(bundle_copy, lambda m: m.update(format=found))
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(bundle_copy)
    assert "\n" not in str(info.value) and ("python -m export" in str(info.value))


def test_preprocessing_the_server_cannot_apply_is_refused_at_load(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["preprocessing"].update(resample="lanczos"))
    with pytest.raises(BundleError, match="preprocessing resample 'lanczos'"):
        load_bundle(bundle_copy)


def test_staged_bundle_replaces_the_old_one_only_when_finished(tmp_path):
    out = tmp_path / "model"
    with staged_bundle(out) as staging:
        (staging / "graph.onnx").write_bytes(b"one")
        manifest = finish(staging, {"name": "model"})
    assert manifest["format"] == FORMAT and set(manifest["checksums"]) == {"graph.onnx"}
    with pytest.raises(RuntimeError, match="conversion failed"):
        with staged_bundle(out) as staging:
            (staging / "graph.onnx").write_bytes(b"two")
            raise RuntimeError("conversion failed")
    assert (out / "graph.onnx").read_bytes() == b"one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_the_manifests_no_repeat_ngram_rule_is_served(bundle_copy, trained_run):
    heldout = json.loads((trained_run / "heldout.json").read_text())[:8]
    plain = CaptionEngine(load_bundle(bundle_copy))
    batch = np.stack([load_image(item["image"], plain.preprocessing) for item in heldout])
    edit_manifest(bundle_copy, lambda m: m.setdefault("decoding", {}).update(no_repeat_ngram_size=1))
    ruled = CaptionEngine(load_bundle(bundle_copy))
    assert ruled.no_repeat_ngram_size == 1
    changed = 0
    for beam_size in (1, 3):
        before = [beams[0].tokens for beams in plain.caption(batch, beam_size).hypotheses]
        after = [beams[0].tokens for beams in ruled.caption(batch, beam_size).hypotheses]
        assert all(len(set(tokens)) == len(tokens) for tokens in after)  # no word twice
        changed += sum(a != b for a, b in zip(before, after))
    assert changed  # two-object captions say "a" twice; the rule changes them


@pytest.mark.parametrize("size", [-1, "2", True, 1.5])
def test_a_bad_no_repeat_ngram_size_is_refused(bundle_copy, size):
    edit_manifest(bundle_copy, lambda m: m.update(decoding={"no_repeat_ngram_size": size}))
    with pytest.raises(BundleError, match="no_repeat_ngram_size"):
        load_bundle(bundle_copy)

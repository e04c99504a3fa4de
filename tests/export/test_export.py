"""The exported bundle: graphs, manifest, checksums, parity figures, and a loud failure when
parity does not hold."""
import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort

from bundle.format import FORMAT
from tests.conftest import run_cli


def test_manifest_describes_everything_the_runtime_needs(bundle_dir, trained_run):
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    run = json.loads((trained_run / "run.json").read_text())
    assert manifest["format"] == FORMAT
    assert manifest["preprocessing"] == run["preprocessing"]
    assert manifest["special_tokens"] == {"pad": 0, "start": 1, "end": 2, "unknown": 3}
    assert manifest["max_length"] == run["max_length"]
    assert manifest["opset"] >= 17
    assert set(manifest["tools"]) >= {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"}
    provenance = manifest["provenance"]
    assert provenance["encoder"]["weights"] == "random:0" and provenance["encoder_weights_random"] is True
    assert "centred" in provenance["encoder"]["random_weights"]  # the manifest says how the random weights were made
    assert "seeded-random" in manifest["description"] and "pooled features" in manifest["description"]
    assert provenance["dataset"]["kind"] == "shapes"
    assert {"bleu1", "bleu4", "objects_right_all"} <= set(provenance["metrics"])
    for name, checksum in manifest["checksums"].items():
        assert checksum == "sha256:" + hashlib.sha256((bundle_dir / name).read_bytes()).hexdigest()


def test_parity_figures_are_recorded_and_within_tolerance(bundle_dir):
    parity = json.loads((bundle_dir / "bundle.json").read_text())["provenance"]["parity"]
    for variant in ("onnx", "optimized"):
        for role in ("encoder", "decoder_init", "decoder_step"):
            assert parity[variant][role]["max_abs_diff_real"] <= parity[variant][role]["atol"]
        done, total = map(int, parity[variant]["greedy_captions_identical"].split("/"))
        assert done == total > 0


def test_graphs_have_a_dynamic_batch_axis(bundle_dir):
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    for role, graph in manifest["graphs"].items():
        model = onnx.load(bundle_dir / graph["file"])
        assert [i.name for i in model.graph.input] == [t["name"] for t in graph["inputs"]]
        assert [o.name for o in model.graph.output] == [t["name"] for t in graph["outputs"]]
        assert all(v.type.tensor_type.shape.dim[0].dim_param == "batch" for v in model.graph.input)
    session = ort.InferenceSession(str(bundle_dir / "encoder.opt.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        (features,) = session.run(None, {"image": np.zeros((batch, 299, 299, 3), np.float32)})
        assert features.shape == (batch, 2048)


def run_with(trained_run, folder, name, change):
    """A copy of the run (files linked) whose JSON file `name` is changed by `change`."""
    folder.mkdir()
    for item in trained_run.iterdir():
        if item.is_file() and item.name != name:
            (folder / item.name).symlink_to(item)
    data = json.loads((trained_run / name).read_text())
    change(data)
    (folder / name).write_text(json.dumps(data))
    return folder


def test_export_refuses_an_unfinished_run(tmp_path):
    result = run_cli("export", "--run", str(tmp_path), "--out", str(tmp_path / "b"), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "not a finished training run" in result.stderr


def test_training_cli_reports_bad_input_in_one_line(tmp_path):
    result = run_cli("training.train", "--dataset", "shapes", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                     check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path}: no image folder (Images/ or Flicker8k_Dataset/)"
    result = run_cli("training.train", "--dataset", "shapes", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--dropout", "1.5", check=False)
    assert result.returncode == 2 and "dropout=1.5" in result.stderr


def test_export_fails_loudly_naming_each_parity_failure(trained_run, tmp_path):
    """One export with two mistakes, each named: a held-out caption Keras did not say, and a run
    that says BGR where training fed RGB (the mistake of a "caffe" bundle for a "tf" model).
    Nothing is written."""
    run = json.loads((trained_run / "run.json").read_text())
    assert run["preprocessing"]["channels"] == "RGB"
    folder = tmp_path / "run"
    run_with(trained_run, folder, "heldout.json", lambda heldout: heldout[0].update(keras_greedy="not what keras said"))
    (folder / "run.json").unlink()
    run["preprocessing"]["channels"] = "BGR"
    (folder / "run.json").write_text(json.dumps(run))
    result = run_cli("export", "--run", str(folder), "--out", str(tmp_path / "bundle"), "--parity-images", "8",
                     check=False)
    assert result.returncode == 1
    assert "export parity failed" in result.stderr
    assert "greedy caption differs" in result.stderr and "keras 'not what keras said'" in result.stderr
    assert "the served preprocessing" in result.stderr and "not the one the model was trained with" in result.stderr
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle.partial").exists()


def test_export_checks_the_served_preprocessing_against_trainings_features(bundle_dir):
    parity = json.loads((bundle_dir / "bundle.json").read_text())["provenance"]["parity"]
    for variant in ("onnx", "optimized"):
        checked = parity[variant]["served_preprocessing"]
        # Within the encoder's own tolerance (1e-4 per unit of its largest feature): far below what
        # separates two images' features, which a preprocessing mistake would be near.
        assert checked["images"] > 0 and checked["max_abs_feature_diff"] <= parity[variant]["encoder"]["atol"]

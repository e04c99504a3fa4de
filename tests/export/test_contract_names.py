"""Each fact of the contract is written once: a tensor renamed in bundle.specs alone is renamed in
the exported graphs, bundle.json, export's parity check and the server, which serves the same
captions as before."""
import io
import json
import os
import subprocess

import numpy as np
import onnx
import pytest

from bundle.format import load_bundle
from bundle.preprocess import load_image
from server.app import create_app
from server.config import Config
from server.engine import CaptionEngine
from tests.conftest import PYTHON, QUIET_TF, ROOT

RENAMED = {"image": "pixels", "token": "word", "h": "state_h", "h_next": "state_h_out", "context": "image_context"}


@pytest.fixture(scope="module")
def renamed_bundle(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_models") / "renamed"
    script = ("import sys; import bundle.specs as specs; specs.TENSOR_NAMES.update(" + repr(RENAMED) + "); "
              "from export.__main__ import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([PYTHON, "-c", script, "--run", str(trained_run), "--out", str(out), "--parity-images", "16"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **QUIET_TF})
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_the_rename_reaches_the_graphs_and_the_manifest(renamed_bundle):
    manifest = json.loads((renamed_bundle / "bundle.json").read_text())
    names = {e["key"]: e["name"] for g in manifest["graphs"].values() for e in g["inputs"] + g["outputs"]}
    assert {k: names[k] for k in RENAMED} == RENAMED and names["c"] == "c"
    step = onnx.load(renamed_bundle / "decoder_step.opt.onnx").graph
    assert [i.name for i in step.input] == ["word", "state_h", "c", "image_context"]
    assert [o.name for o in step.output] == ["log_probs", "state_h_out", "c_next"]
    done, total = map(int, manifest["provenance"]["parity"]["optimized"]["greedy_captions_identical"].split("/"))
    assert done == total == 16  # export's parity decoded the renamed graphs


def test_the_server_serves_the_renamed_bundle_as_it_served_the_original(renamed_bundle, bundle_dir, trained_run):
    images = [item["image"] for item in json.loads((trained_run / "heldout.json").read_text())[:6]]
    original, renamed = CaptionEngine(load_bundle(bundle_dir)), CaptionEngine(load_bundle(renamed_bundle))
    batch = np.stack([load_image(path, original.preprocessing) for path in images])
    for beam_size in (3, 1):
        want = [[h.tokens for h in beams] for beams in original.caption(batch, beam_size).hypotheses]
        assert [[h.tokens for h in beams] for beams in renamed.caption(batch, beam_size).hypotheses] == want
    client = create_app(Config(bundle=renamed_bundle, warmup=False)).test_client()
    with open(images[0], "rb") as handle:
        response = client.post("/api/v1/captions", data={"image": (io.BytesIO(handle.read()), "scene.jpg")})
    assert response.status_code == 200
    assert response.json["captions"][0]["tokens"] == original.words(want[0][0])  # greedy, the API's default

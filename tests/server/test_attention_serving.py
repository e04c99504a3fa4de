"""An attention bundle (the decoder attends over the encoder's 8x8 map) is exported with parity
and served like a pooled one: batched beams, bound buffers, the HTTP API."""
import json

import numpy as np
import pytest
import requests

from bundle.format import load_bundle
from bundle.preprocess import load_image
from server.engine import CaptionEngine, EngineOptions


@pytest.fixture(scope="module")
def engine(attention_bundle_dir):
    return CaptionEngine(load_bundle(attention_bundle_dir))


@pytest.fixture(scope="module")
def images(engine, shapes_dataset):
    paths = sorted((shapes_dataset / "Images").iterdir())[:5]
    return np.stack([load_image(p, engine.preprocessing) for p in paths])


def test_the_manifest_describes_the_map_and_the_carried_memory(attention_bundle_dir):
    manifest = json.loads((attention_bundle_dir / "bundle.json").read_text())
    graphs = manifest["graphs"]
    assert graphs["encoder"]["outputs"][0]["shape"] == ["batch", 64, 32]  # the learned part's 2 x 16 channels
    learned = manifest["provenance"]["encoder"]["learned_part"]
    assert learned["reads"] == ["mixed2", "mixed10"] and 0 < learned["share_of_trunk"] < 0.01
    init = {t["key"]: t["shape"] for t in graphs["decoder_init"]["outputs"]}
    assert init["memory"] == ["batch", 64, 24]
    step_outputs = {t["key"]: t["shape"] for t in graphs["decoder_step"]["outputs"]}
    # The memory is carried, not updated; the step says where it looked.
    assert step_outputs == {"log_probs": step_outputs["log_probs"], "h_next": ["batch", 48], "c_next": ["batch", 48],
                            "attention": ["batch", 64]}
    parity = manifest["provenance"]["parity"]["optimized"]
    assert parity["greedy_captions_identical"].split("/")[0] == parity["greedy_captions_identical"].split("/")[1]
    assert manifest["provenance"]["decoder"]["attention"] is True
    assert "soft attention" in manifest["description"] and "seeded-random" in manifest["description"]
    assert manifest["decoding"]["no_repeat_ngram_size"] == 4


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batched_captions_equal_single_ones(engine, images, beam_size):
    batched = [[h.tokens for h in beams] for beams in engine.caption(images, beam_size=beam_size).hypotheses]
    single = [[h.tokens for h in engine.caption(images[i:i + 1], beam_size=beam_size).hypotheses[0]]
              for i in range(len(images))]
    assert batched == single


def test_bound_buffers_decode_like_numpy(attention_bundle_dir, engine, images):
    bound = CaptionEngine(load_bundle(attention_bundle_dir), EngineOptions(io_binding="on"))
    for beam_size in (1, 3):
        want = [[h.tokens for h in beams] for beams in engine.caption(images, beam_size=beam_size).hypotheses]
        got = [[h.tokens for h in beams] for beams in bound.caption(images, beam_size=beam_size).hypotheses]
        assert got == want
        want = engine.caption(images, beam_size=beam_size, attention=True).hypotheses
        got = bound.caption(images, beam_size=beam_size, attention=True).hypotheses
        for a, b in zip(want, got):
            assert [h.tokens for h in a] == [h.tokens for h in b]
            assert all(np.allclose(x.attention, y.attention, atol=1e-6) for x, y in zip(a, b))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_each_word_comes_with_where_the_step_looked(engine, images, beam_size):
    plain = engine.caption(images, beam_size=beam_size).hypotheses
    looked = engine.caption(images, beam_size=beam_size, attention=True).hypotheses
    assert [[h.tokens for h in b] for b in looked] == [[h.tokens for h in b] for b in plain]
    for beams in looked:
        for h in beams:
            assert h.attention.shape == (len(h.tokens), 64)
            assert np.allclose(h.attention.sum(1), 1.0, atol=1e-4) and (h.attention >= 0).all()
    # The best beam's rows are the ones its own words were chosen with: replaying them one image
    # at a time, greedily, gives the same weights.
    if beam_size == 1:
        single = engine.caption(images[:1], attention=True).hypotheses[0][0]
        assert np.allclose(single.attention, looked[0][0].attention, atol=1e-5)


def test_the_api_captions_with_an_attention_bundle(attention_server, shapes_dataset):
    server = attention_server
    path = sorted((shapes_dataset / "Images").glob("*.png"))[0]
    for beam in ("1", "3"):
        response = requests.post(server.url + "/api/v1/captions", data={"beam_size": beam}, timeout=60,
                                 files={"image": (path.name, path.read_bytes(), "image/png")})
        assert response.status_code == 200, response.text
        assert response.json()["captions"][0]["tokens"]
        assert "attention" not in response.json()["captions"][0]
        response = requests.post(server.url + "/api/v1/captions?attention=true", data={"beam_size": beam},
                                 files={"image": (path.name, path.read_bytes(), "image/png")}, timeout=60)
        caption = response.json()["captions"][0]
        assert caption["attention"]["grid"] == [8, 8]
        assert len(caption["attention"]["weights"]) == len(caption["tokens"])
        assert all(len(row) == 64 and abs(sum(row) - 1) < 1e-2 for row in caption["attention"]["weights"])
    assert requests.get(server.url + "/api/v1/model").json()["attention_grid"] == [8, 8]
    response = requests.post(server.url + "/api/v1/captions?attention=maybe",
                             files={"image": (path.name, path.read_bytes(), "image/png")}, timeout=60)
    assert response.status_code == 422 and "attention must be true or false" in response.text


def test_a_bundle_without_attention_says_so_with_a_422(server, shapes_dataset):
    path = sorted((shapes_dataset / "Images").glob("*.png"))[0]
    response = requests.post(server.url + "/api/v1/captions", data={"attention": "true"}, timeout=60,
                             files={"image": (path.name, path.read_bytes(), "image/png")})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "no_attention"
    assert requests.get(server.url + "/api/v1/model").json()["attention_grid"] is None


def test_the_inference_protocol_answers_attention_when_asked(attention_server, attention_bundle_dir, shapes_dataset):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    name = load_bundle(attention_bundle_dir).name
    client = triton.InferenceServerClient(attention_server.url.removeprefix("http://"))
    outputs = {o["name"]: o for o in client.get_model_metadata(name)["outputs"]}
    assert outputs["attention"] == {"name": "attention", "datatype": "FP32", "shape": [-1, -1, 64]}
    images = [p.read_bytes() for p in sorted((shapes_dataset / "Images").glob("*.png"))[:2]]
    tensor = triton.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    result = client.infer(name, [tensor], parameters={"attention": True, "beam_size": 2})
    captions = [c.decode().split() for c in result.as_numpy("caption")]
    weights = result.as_numpy("attention")
    assert weights.shape == (2, max(map(len, captions)), 64)
    for words, rows in zip(captions, weights):
        assert np.allclose(rows[:len(words)].sum(1), 1.0, atol=1e-3) and not rows[len(words):].any()
    plain = client.infer(name, [tensor])
    assert plain.as_numpy("attention") is None
    # Asking for the output asks for the weights; asking for it while saying attention: false is refused.
    only = client.infer(name, [tensor], outputs=[triton.InferRequestedOutput("attention")])
    assert np.array_equal(only.as_numpy("attention"), client.infer(name, [tensor], parameters={"attention": True})
                          .as_numpy("attention")) and only.as_numpy("caption") is None
    with pytest.raises(InferenceServerException, match="parameter attention: false"):
        client.infer(name, [tensor], parameters={"attention": False},
                     outputs=[triton.InferRequestedOutput("attention")])


def test_grpc_answers_the_same_attention_as_rest(attention_server, attention_bundle_dir, shapes_dataset):
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton

    name = load_bundle(attention_bundle_dir).name
    images = [p.read_bytes() for p in sorted((shapes_dataset / "Images").glob("*.png"))[:2]]
    answers = []
    for module, address in ((triton, attention_server.url.removeprefix("http://")),
                            (triton_grpc, f"127.0.0.1:{attention_server.grpc_port}")):
        tensor = module.InferInput("image", [2], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
        answers.append(module.InferenceServerClient(address).infer(name, [tensor], parameters={"attention": True}))
    rest, grpc = answers
    assert [t.name for t in triton_grpc.InferenceServerClient(f"127.0.0.1:{attention_server.grpc_port}")
            .get_model_metadata(name).outputs] == ["caption", "log_prob", "attention"]
    assert np.array_equal(grpc.as_numpy("caption"), rest.as_numpy("caption"))
    assert grpc.as_numpy("attention").shape == rest.as_numpy("attention").shape
    assert np.allclose(grpc.as_numpy("attention"), rest.as_numpy("attention"), atol=1e-6)


def test_the_inference_protocol_refuses_attention_for_a_pooled_model(server, bundle_dir, shapes_dataset):
    import base64

    image = sorted((shapes_dataset / "Images").glob("*.png"))[0].read_bytes()
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}],
            "parameters": {"attention": True}}
    response = requests.post(f"{server.url}/v2/models/{bundle_dir.name}/infer", json=body, timeout=60)
    assert response.status_code == 422 and "cannot show where it looked" in response.json()["error"]
    outputs = requests.get(f"{server.url}/v2/models/{bundle_dir.name}").json()["outputs"]
    assert [o["name"] for o in outputs] == ["caption", "log_prob"]

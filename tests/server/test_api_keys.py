"""API keys: off unless configured; then every captioning and model route (JSON API, the protocol
over REST and gRPC, the form's submissions) needs one, the probes and /metrics stay open, and no
key is ever written to the log."""
import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from server.api_keys import is_valid, presented_key, read_keys, route_is_open
from server.config import Config, ConfigError
from tests.conftest import API_KEYS

KEY = API_KEYS[1]


def test_keys_come_from_the_list_and_the_file_and_a_bad_one_is_named_by_position_only(tmp_path):
    file = tmp_path / "keys"
    file.write_text("# the team's keys\n\nfile-key-0123456789abcdef\n")
    keys, problems = read_keys("list-key-0123456789abcdef", str(file))
    assert keys == (b"list-key-0123456789abcdef", b"file-key-0123456789abcdef") and problems == []
    with pytest.raises(ConfigError, match=r"API key 2 \(in the order given\)") as refused:
        Config.from_env({"CAPTION_API_KEYS": "list-key-0123456789abcdef,short secret"})
    assert "short secret" not in str(refused.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        Config.from_env({"CAPTION_API_KEYS_FILE": str(tmp_path / "missing")})
    assert Config.from_env({}).api_key_set == ()
    assert "list-key" not in repr(Config.from_env({"CAPTION_API_KEYS": "list-key-0123456789abcdef"}))


def test_a_key_is_a_bearer_token_matched_against_every_key():
    keys = tuple(k.encode() for k in API_KEYS)
    assert is_valid(presented_key(f"Bearer {KEY}"), keys) and is_valid(presented_key(f"bearer  {KEY} "), keys)
    for header in (None, "", KEY, f"Basic {KEY}", f"Bearer {KEY}x", "Bearer "):
        assert not is_valid(presented_key(header), keys), header
    assert route_is_open("GET", "/healthz") and route_is_open("GET", "/") and not route_is_open("POST", "/")
    assert not route_is_open("POST", "/api/v1/captions") and route_is_open("GET", "/v2/models/<name>/ready")


def needs_key(server) -> list[tuple[str, str]]:
    """(method, path) of every operation the live document marks as needing a key, model names filled in."""
    document = requests.get(server.url + "/openapi.json").json()
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    model = requests.get(server.url + "/api/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["default"]
    return [(method.upper(), path.replace("{name}", model).replace("{version}", "1"))
            for path, operations in document["paths"].items() for method, op in operations.items() if "security" in op]


def test_every_route_that_needs_a_key_refuses_none_and_a_wrong_one_and_takes_a_right_one(keyed_server):
    routes = needs_key(keyed_server)
    assert {("POST", "/api/v1/captions"), ("GET", "/api/v1/model"), ("GET", "/v2")} <= set(routes)
    assert all("/ready" not in path and "/health" not in path for _, path in routes)
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789abcdef"}, {"Authorization": KEY}):
            answer = requests.request(method, keyed_server.url + path, headers=headers)
            assert answer.status_code == 401, (method, path, headers)
            assert answer.headers["WWW-Authenticate"] == 'Bearer realm="caption-server"'
            error = answer.json()["error"]
            assert "API key" in (error if path.startswith("/v2") else error["message"])
        answered = requests.request(method, keyed_server.url + path, headers={"Authorization": f"Bearer {KEY}"})
        assert answered.status_code != 401, (method, path)
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready", "/openapi.json", "/"):
        assert requests.get(keyed_server.url + path).status_code == 200, path


def test_a_caption_with_a_key_over_rest_and_grpc_and_unauthenticated_without(keyed_server, bundle_dir, trained_run):
    import json
    from pathlib import Path

    image = Path(json.loads((trained_run / "heldout.json").read_text())[0]["image"]).read_bytes()
    rest = requests.post(keyed_server.url + "/api/v1/captions", files={"image": image},
                         headers={"Authorization": f"Bearer {KEY}"})
    assert rest.status_code == 200
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{keyed_server.grpc_port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(bundle_dir.name)
    tensor = triton_grpc.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=object))
    for headers in ({}, {"authorization": "Bearer wrong-key-0123456789abcdef"}):
        for call in (lambda: client.infer(bundle_dir.name, [tensor], headers=headers),
                     lambda: client.get_model_metadata(bundle_dir.name, headers=headers),
                     lambda: client.get_server_metadata(headers=headers)):
            with pytest.raises(InferenceServerException) as refused:
                call()
            assert refused.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
    result = client.infer(bundle_dir.name, [tensor], headers={"authorization": f"Bearer {KEY}"})
    assert result.as_numpy("caption")[0].decode() == rest.json()["captions"][0]["caption"]


def test_the_form_asks_for_the_key_and_keeps_it_for_the_page(keyed_server, trained_run):
    import json
    from pathlib import Path

    image = Path(json.loads((trained_run / "heldout.json").read_text())[0]["image"]).read_bytes()
    assert 'name="api_key"' in requests.get(keyed_server.url + "/").text
    refused = requests.post(keyed_server.url + "/", files={"image": ("s.png", image)})
    assert refused.status_code == 401 and "Enter a valid API key." in refused.text
    wrong = requests.post(keyed_server.url + "/", files={"image": ("s.png", image)},
                          data={"api_key": "wrong-key-0123456789abcdef"})
    assert wrong.status_code == 401 and "That API key is not valid." in wrong.text
    page = requests.post(keyed_server.url + "/", files={"image": ("s.png", image)}, data={"api_key": KEY})
    assert page.status_code == 200 and 'id="caption"' in page.text and f'value="{KEY}"' in page.text
    assert page.headers["Cache-Control"] == "no-store"  # a page holding a key is not kept by a cache


def test_no_key_reaches_the_log(keyed_server):
    requests.get(keyed_server.url + "/api/v1/model", headers={"Authorization": f"Bearer {KEY}"})
    requests.get(keyed_server.url + "/api/v1/model", headers={"Authorization": "Bearer guessed-key-0123456789ab"})
    log = keyed_server.output()
    assert "GET /api/v1/model 401 unauthorized" in log  # the refusal is logged, without what was sent
    assert not any(secret in log for secret in (*API_KEYS, "guessed-key-0123456789ab"))

"""Several models in one server, chosen per request, and a new bundle going live without downtime."""
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from harness.doc_commands import shell_lines
from harness.scenarios import SlowRequest
from harness.server_process import GunicornServer, MakeServe


def renamed_copy(bundle_dir: Path, target: Path, name: str, **manifest_changes) -> Path:
    """A copy of a bundle under another name (bundle.json is not among its checksummed files)."""
    shutil.copytree(bundle_dir, target)
    manifest = json.loads((target / "bundle.json").read_text())
    manifest.update(name=name, **manifest_changes)
    (target / "bundle.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture(scope="module")
def two_model_server(bundle_dir, tmp_path_factory):
    short = renamed_copy(bundle_dir, tmp_path_factory.mktemp("extra") / "short", "short", max_length=3)
    srv = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "CAPTION_EXTRA_BUNDLES": str(short)})
    srv.wait_ready()
    yield srv
    srv.stop()


def test_models_are_listed_and_chosen_per_request(two_model_server, bundle_dir, trained_run):
    url = two_model_server.url
    listing = requests.get(url + "/api/v1/models").json()
    assert listing["default"] == bundle_dir.name
    assert [m["name"] for m in listing["models"]] == [bundle_dir.name, "short"]
    assert [m["max_length"] for m in listing["models"]] == [json.loads((bundle_dir / "bundle.json").read_text())["max_length"], 3]

    image = Path(json.loads((trained_run / "heldout.json").read_text())[0]["image"]).read_bytes()
    default = requests.post(url + "/api/v1/captions", files={"image": image}).json()
    short = requests.post(url + "/api/v1/captions", files={"image": image}, data={"model": "short"}).json()
    assert default["model"]["name"] == bundle_dir.name and short["model"]["name"] == "short"
    assert len(default["captions"][0]["tokens"]) > 3 >= len(short["captions"][0]["tokens"])
    assert short["captions"][0]["tokens"] == default["captions"][0]["tokens"][:3]
    by_query = requests.post(url + "/api/v1/captions?model=short", files={"image": image}).json()
    assert by_query["model"]["name"] == "short"

    unknown = requests.post(url + "/api/v1/captions?model=nope", files={"image": image})
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "unknown_model" and "short" in unknown.json()["error"]["message"]
    document = requests.get(url + "/openapi.json").json()
    assert "/api/v1/models" in document["paths"]

    # The web form offers the choice.
    page = requests.get(url + "/").text
    assert '<select id="model" name="model">' in page and '<option value="short">' in page
    answer = requests.post(url + "/", files={"image": ("a.jpg", image)}, data={"model": "short"})
    assert answer.status_code == 200 and "short · beam width" in answer.text


def test_two_bundles_with_one_name_stop_start_up(bundle_dir, tmp_path):
    twin = renamed_copy(bundle_dir, tmp_path / "twin", bundle_dir.name)
    srv = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "CAPTION_EXTRA_BUNDLES": str(twin)})
    try:
        assert srv.process.wait(30) != 0
        assert "two bundles are named" in srv.output()
    finally:
        srv.stop()


def test_the_documented_reload_and_drain_on_a_make_serve_server(bundle_dir, trained_run, tmp_path):
    """docs/operating.md's roll-out, run as written against `make serve`: swap the symlink and send
    the master SIGHUP; every request is answered 200 and the answers switch to the new model.
    Then its drain: what is in flight is answered and the server stops."""
    swap, reload = shell_lines("operating.md", "live.next")[0], shell_lines("operating.md", "kill -HUP")[0]
    drain = shell_lines("operating.md", "kill -TERM")[0]
    models = tmp_path / "onnx_models"
    renamed_copy(bundle_dir, models / "demo-v1", "model-v1")
    renamed_copy(bundle_dir, models / "demo-v2", "model-v2")
    (models / "live").symlink_to("demo-v1")
    srv = MakeServe(models / "live", tmp_path, {"WEB_CONCURRENCY": "2"})
    image = Path(json.loads((trained_run / "heldout.json").read_text())[0]["image"]).read_bytes()
    answers, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                response = requests.post(srv.url + "/api/v1/captions", files={"image": image}, timeout=30)
                answers.append((response.status_code, response.json().get("model", {}).get("name")))
            except requests.RequestException as exc:
                answers.append((type(exc).__name__, None))

    def run(command):
        return subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=30)

    threads = [threading.Thread(target=load) for _ in range(3)]
    try:
        srv.wait_ready()
        for t in threads:
            t.start()
        time.sleep(1.5)
        old_workers = srv.workers()
        assert run(swap).returncode == 0 and run(reload).returncode == 0
        deadline = time.time() + 60
        while time.time() < deadline and not (answers and answers[-1][1] == "model-v2"):
            time.sleep(0.2)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        # The old workers finish what they hold first (gunicorn checks once a second, up to graceful_timeout).
        until = time.time() + 35
        while set(old_workers) & set(srv.workers()) and time.time() < until:
            time.sleep(0.2)
        assert srv.process.poll() is None, "make serve died: " + srv.output()[-500:]  # make's shell took no HUP
        assert not set(old_workers) & set(srv.workers())  # every worker was replaced
        names = [name for _, name in answers]
        assert "model-v1" in names and names[-1] == "model-v2", names[-5:]
        assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:5]

        srv.wait_ready()  # a TERM that reaches a worker still booting is lost: drain once all are up
        in_flight = SlowRequest(srv.url, image)
        time.sleep(0.3)
        assert run(drain).returncode == 0
        answer = in_flight.response()
        assert answer.status_code == 200 and len(answer.json()["captions"]) == 16
        assert srv.process.wait(40) == 0  # gunicorn stopped, and make with it
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join()
        srv.stop()

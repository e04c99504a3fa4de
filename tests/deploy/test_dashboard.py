"""The Grafana dashboard in deploy/grafana: well-formed for Grafana's import, and every query of
every panel returns data from a real Prometheus (Debian's) scraping a live server under load."""
import json
import time
from pathlib import Path

import pytest

from harness.dashboard import DASHBOARD, Prometheus, expression, finite_values, mixed_load, panels


def test_the_dashboard_imports_with_a_prometheus_datasource_chosen_at_import():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "caption-server" and dashboard["templating"]["list"][0]["type"] == "datasource"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["description"] and panel["targets"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])


@pytest.fixture(scope="module")
def scraped(server, bundle_dir, trained_run, tmp_path_factory):
    """Prometheus scraping the live server, after 6 s of mixed load."""
    prometheus = Prometheus([server.url.removeprefix("http://")], tmp_path_factory.mktemp("prometheus"))
    try:
        prometheus.wait_scraping()
        image = Path(json.loads((trained_run / "heldout.json").read_text())[0]["image"]).read_bytes()
        load = mixed_load(server, image, bundle_dir.name, seconds=6)
        assert load["grpc_calls"] > 0 and load["rest"]["requests"] > 0
        time.sleep(2.5)  # the last scrapes of the load
        yield prometheus
    finally:
        prometheus.stop()


@pytest.mark.parametrize("panel", panels(), ids=lambda p: p["title"])
def test_every_query_of_the_panel_returns_data(scraped, panel):
    for target in panel["targets"]:
        result = scraped.query(expression(target))
        assert finite_values(result), f"{panel['title']}: {target['expr']} returned {result}"


def test_the_panels_show_what_the_load_did(scraped):
    by_route = {(s["metric"]["route"], s["metric"]["status"]) for s in scraped.query(
        'sum by (route, status) (increase(caption_http_requests_total[1m]))')}
    assert {("/api/v1/captions", "200"), ("/api/v1/captions", "415"), ("/api/v1/captions", "503"),
            ("/inference.GRPCInferenceService/ModelInfer", "200")} <= by_route
    assert {s["metric"]["reason"] for s in scraped.query("caption_requests_shed_total")} >= {"deadline"}
    workers = scraped.query("count(caption_model_info) by (model, path)")
    assert [float(s["value"][1]) for s in workers] == [2.0]  # the server's two workers

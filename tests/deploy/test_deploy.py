"""The Dockerfile and Kubernetes manifests agree with the server they deploy (no container engine runs here)."""
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from harness.server_process import ROOT
from server.config import Config
from server.openapi import openapi_document

DOCKERFILE = (ROOT / "Dockerfile").read_text()
MANIFESTS = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "deploy" / "k8s").glob("*.yaml")}
GUNICORN_CONF = (ROOT / "gunicorn.conf.py").read_text()


def instructions(keyword: str) -> list[str]:
    """The arguments of every Dockerfile instruction `keyword`, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(keyword + " ")]


def docker_env() -> dict:
    env = {}
    for args in instructions("ENV"):
        env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    return env


def container():
    return MANIFESTS["deployment"]["spec"]["template"]["spec"]["containers"][0]


def documented_settings() -> set[str]:
    """The process settings gunicorn.conf.py reads (server/process_settings.py; docs/operating.md lists them)."""
    from server.process_settings import PROCESS_SETTINGS

    return {setting.name for setting in PROCESS_SETTINGS}


def test_image_runs_what_make_serve_runs_without_tensorflow():
    makefile = (ROOT / "Makefile").read_text()
    serve = re.search(r"^serve:.*\n\t(.*)$", makefile, re.M).group(1)
    assert "gunicorn -c gunicorn.conf.py" in serve
    assert instructions("CMD") == ['["gunicorn", "-c", "gunicorn.conf.py"]']
    installs = " ".join(instructions("RUN"))
    assert "-r requirements-server.txt" in installs and "requirements-train" not in installs
    packages = [line.split("==")[0].lower() for line in (ROOT / "requirements-server.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert packages and not [p for p in packages if p.startswith(("tensorflow", "keras", "tf2onnx"))]
    for source in (args.split()[0] for args in instructions("COPY") if not args.startswith("${")):
        assert (ROOT / source).exists(), source
    gpu = [line.split("==")[0] for line in (ROOT / "requirements-gpu.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    assert "-r requirements-gpu.txt" in installs and "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert "uninstall -y onnxruntime" in installs  # both packages install one module: never both at once
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "data", "runs", "training"} <= set(ignored)


def test_image_and_pod_settings_are_known_to_the_server():
    for env in (docker_env(), {e["name"]: e["value"] for e in container()["env"]}):
        caption = {k: v for k, v in env.items() if k.startswith("CAPTION_")}
        Config.from_env(caption)  # raises on an unknown or invalid CAPTION_* setting
        others = set(env) - set(caption) - {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR",
                                            "PIP_DISABLE_PIP_VERSION_CHECK"}
        assert others <= documented_settings(), others - documented_settings()
        assert env["HOST"] == "0.0.0.0"


def test_non_root_user_and_ports_agree():
    uid = instructions("USER")[0]
    assert uid != "0" and uid != "root"
    pod = MANIFESTS["deployment"]["spec"]["template"]["spec"]
    assert str(pod["securityContext"]["runAsUser"]) == uid and pod["securityContext"]["runAsNonRoot"]
    port = container()["ports"][0]
    exposed = instructions("EXPOSE")[0].split()
    assert str(port["containerPort"]) == docker_env()["PORT"] == exposed[0]
    assert {e["name"]: e["value"] for e in container()["env"]}["PORT"] == str(port["containerPort"])
    grpc = container()["ports"][1]
    assert grpc["name"] == "grpc" and str(grpc["containerPort"]) == docker_env()["GRPC_PORT"] == exposed[1]
    assert {e["name"]: e["value"] for e in container()["env"]}["GRPC_PORT"] == str(grpc["containerPort"])
    service = MANIFESTS["service"]["spec"]
    assert [p["targetPort"] for p in service["ports"]] == [port["name"], grpc["name"]]
    assert service["selector"] == MANIFESTS["deployment"]["spec"]["selector"]["matchLabels"]
    for path in MANIFESTS["ingress"]["spec"]["rules"][0]["http"]["paths"]:
        assert path["backend"]["service"]["name"] == MANIFESTS["service"]["metadata"]["name"]


def test_the_ingress_publishes_only_the_public_routes():
    paths = {(p["path"], p["pathType"]) for p in MANIFESTS["ingress"]["spec"]["rules"][0]["http"]["paths"]}
    assert paths == {("/api/v1/captions", "Exact"), ("/", "Exact"), ("/static/", "Prefix")}
    internal = set(openapi_document(Config(), 12, ["demo"], ["demo"])["paths"]) - {"/api/v1/captions"}
    assert internal >= {"/metrics", "/openapi.json", "/api/v1/model", "/api/v1/models", "/readyz"}
    for route in internal:
        assert not any(route == path or (kind == "Prefix" and route.startswith(path)) for path, kind in paths), route


def test_pods_get_no_service_link_variables_and_would_start_with_them():
    assert MANIFESTS["deployment"]["spec"]["template"]["spec"]["enableServiceLinks"] is False
    # What Kubernetes injects for a Service named caption-server when service links are on.
    links = {"CAPTION_SERVER_SERVICE_HOST": "10.0.0.7", "CAPTION_SERVER_SERVICE_PORT": "80",
             "CAPTION_SERVER_SERVICE_PORT_HTTP": "80", "CAPTION_SERVER_PORT": "tcp://10.0.0.7:80",
             "CAPTION_SERVER_PORT_80_TCP": "tcp://10.0.0.7:80", "CAPTION_SERVER_PORT_80_TCP_PROTO": "tcp",
             "CAPTION_SERVER_PORT_80_TCP_PORT": "80", "CAPTION_SERVER_PORT_80_TCP_ADDR": "10.0.0.7"}
    env = {e["name"]: e["value"] for e in container()["env"]}
    assert Config.from_env({**env, **links}).bundle == Config.from_env(env).bundle


def test_probes_use_the_health_routes_and_shutdown_outlasts_gunicorn():
    paths = openapi_document(Config(), 12, ["demo"], ["demo"])["paths"]
    probes = {kind: container()[kind]["httpGet"]["path"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    assert set(probes.values()) <= set(paths)
    graceful = int(re.search(r"^graceful_timeout = (\d+)", GUNICORN_CONF, re.M).group(1))
    pre_stop = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"  # the Service forgets the pod before gunicorn stops listening
    drain = int(pre_stop[1]) + graceful
    assert MANIFESTS["deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    # A read-only root needs a writable /tmp for gunicorn's heartbeat files and the metrics folder.
    assert container()["securityContext"]["readOnlyRootFilesystem"]
    assert any(m["mountPath"] == "/tmp" for m in container()["volumeMounts"])
    env = {e["name"]: e["value"] for e in container()["env"]}
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    annotations = MANIFESTS["deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in paths


KUBERNETES_VERSION = "1.33"  # the oldest release still supported upstream when these manifests were written


def kubernetes_resources() -> dict[str, dict]:
    """Every Kubernetes object under deploy/k8s (Helm values and other YAML without a kind left out)."""
    resources = {}
    for path in sorted((ROOT / "deploy" / "k8s").rglob("*.yaml")):
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document and "kind" in document:
                resources[f"{path.relative_to(ROOT)}#{index}"] = document
    return resources


def test_every_manifest_passes_the_kubernetes_schemas():
    import kubernetes_validate

    resources = kubernetes_resources()
    kinds = sorted(r["kind"] for r in resources.values())
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "HorizontalPodAutoscaler", "Ingress",
                     "PodDisruptionBudget", "Service"]
    for where, resource in resources.items():
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{where}: {exc.message}") from None


def test_the_schema_check_refuses_a_misspelt_field():
    import kubernetes_validate

    broken = yaml.safe_load((ROOT / "deploy" / "k8s" / "autoscaler.yaml").read_text())
    broken["spec"]["minReplica"] = broken["spec"].pop("minReplicas")
    try:
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        assert "minReplica" in exc.message
    else:
        raise AssertionError("a misspelt field passed the schema check")


def test_autoscaling_and_disruption_budget_fit_the_deployment():
    from server import observability

    deployment = MANIFESTS["deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count; apply must not reset it
    cpu, queue = (yaml.safe_load(p.read_text()) for p in (ROOT / "deploy" / "k8s" / "autoscaler.yaml",
                                                           ROOT / "deploy" / "k8s" / "queue-depth" / "autoscaler.yaml"))
    budget = MANIFESTS["disruption-budget"]
    assert cpu["metadata"]["name"] == queue["metadata"]["name"]  # one replaces the other
    for autoscaler in (cpu, queue):
        target = autoscaler["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert autoscaler["spec"]["minReplicas"] > budget["spec"]["maxUnavailable"]  # a drain never empties it
    assert cpu["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "cpu" in container()["resources"]["requests"]  # utilisation is measured against the request
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The queue-depth metric is one the server exports, and the adapter publishes it under that name.
    metric = queue["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric == observability.QUEUE_IMAGES._name
    adapter = yaml.safe_load((ROOT / "deploy" / "k8s" / "queue-depth" / "prometheus-adapter-values.yaml").read_text())
    rule = adapter["rules"]["custom"][0]
    assert metric in rule["seriesQuery"] and rule["name"]["as"] == metric


KSERVE_SCHEMA = ROOT / "tests" / "deploy" / "kserve-0.21.0-inferenceservice.json"
INFERENCE_SERVICE = yaml.safe_load((ROOT / "deploy" / "kserve" / "inferenceservice.yaml").read_text())


def validate_inference_service(resource: dict) -> None:
    """KServe's InferenceService schema (tests/deploy/kserve_schema.py), its Kubernetes types
    checked against the same strict schemas as the other manifests."""
    import jsonschema
    import kubernetes_validate
    from referencing import Registry, Resource

    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}.0-local-strict"
    definitions = Resource.from_contents(json.loads((folder / "_definitions.json").read_text()))
    schema = json.loads(KSERVE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema, registry=definitions @ Registry())
    validator.validate(resource)


def test_the_kserve_inference_service_passes_its_schema():
    validate_inference_service(INFERENCE_SERVICE)


def test_the_kserve_schema_check_refuses_misspelt_fields():
    import jsonschema

    for path in (("spec", "predictor"), ("spec", "predictor", "containers", 0)):
        broken = json.loads(json.dumps(INFERENCE_SERVICE))
        target = broken
        for key in path:
            target = target[key]
        target["minReplica" if path[-1] == "predictor" else "readinesProbe"] = 1
        try:
            validate_inference_service(broken)
        except jsonschema.ValidationError:
            continue
        raise AssertionError(f"a misspelt field under {path} passed the schema check")


def test_the_kserve_predictor_runs_the_deployments_pod_on_the_protocols_health_routes():
    predictor = INFERENCE_SERVICE["spec"]["predictor"]
    server = predictor["containers"][0]
    deployed = container()
    for key in ("image", "env", "resources", "lifecycle", "securityContext", "volumeMounts"):
        assert server[key] == deployed[key], key
    pod = MANIFESTS["deployment"]["spec"]["template"]["spec"]
    for key in ("enableServiceLinks", "terminationGracePeriodSeconds", "securityContext", "volumes"):
        assert predictor[key] == pod[key], key
    env = {e["name"]: e["value"] for e in server["env"]}
    assert [p["containerPort"] for p in server["ports"]] == [int(env["PORT"])]
    paths = openapi_document(Config(), 12, ["demo"], ["demo"])["paths"]
    probes = {kind: server[kind]["httpGet"]["path"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
                      "livenessProbe": "/v2/health/live"}
    assert set(probes.values()) <= set(paths)
    autoscaler = MANIFESTS["autoscaler"]["spec"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (autoscaler["minReplicas"], autoscaler["maxReplicas"])
    assert predictor["scaleTarget"] == autoscaler["metrics"][0]["resource"]["target"]["averageUtilization"]


@pytest.mark.parametrize("env, line", [
    ({"LOG_LEVEL": "verbose"}, "error: LOG_LEVEL='verbose': expected debug, info, warning or error"),
    ({"GUNICORN_TIMEOUT": "soon"}, "error: GUNICORN_TIMEOUT='soon': expected an integer >= 1"),
])
def test_bad_process_settings_stop_gunicorn_with_one_line_naming_them(env, line):
    """gunicorn reads its settings before any worker starts: a bad one is named, not a logging
    config error (LOG_LEVEL=verbose said "Unable to configure logger 'gunicorn.error'")."""
    import os
    import subprocess
    import sys

    result = subprocess.run([str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, env={**os.environ, "PORT": "0", **env})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [line]

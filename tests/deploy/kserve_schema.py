"""A JSON Schema of KServe's InferenceService (serving.kserve.io/v1beta1), made from the field
tables of the KServe Python SDK's generated models, whose Kubernetes types refer to the same
strict Kubernetes schemas the other manifests are checked against (kubernetes-validate).

Regenerate after a KServe upgrade:
    pip download --no-deps kserve==0.21.0 && unzip kserve-*.whl 'kserve/models/*'
    python -m tests.deploy.kserve_schema kserve/models > tests/deploy/kserve-0.21.0-inferenceservice.json
"""
from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

KUBERNETES = "/api/_definitions.json#/$defs/"
# SDK type names that are not io.k8s.api.core.v1.<Name>.
KUBERNETES_TYPES = {"V1ObjectMeta": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                    "ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
                    "V1beta1MetricQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",  # no model of its own
                    "V1LabelSelector": "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"}
# The SDK's K8sIo<Group><Version><Name> types: io.k8s.api.<group>.<version>.<Name>.
QUALIFIED = re.compile(r"K8sIoApi([A-Z][a-z]+)(V[0-9]+(?:(?:alpha|beta)[0-9]+)?)([A-Z]\w+)")
PRIMITIVES = {"str": {"type": "string"}, "int": {"type": "integer"}, "bool": {"type": "boolean"},
              "float": {"type": "number"}, "object": {}}


def model_tables(models: Path) -> dict[str, tuple[dict, dict]]:
    """{class name: (openapi_types, attribute_map)} of every generated model file."""
    tables = {}
    for path in sorted(models.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                found = {t.id: ast.literal_eval(item.value) for item in node.body if isinstance(item, ast.Assign)
                         for t in item.targets if isinstance(t, ast.Name) and t.id in ("openapi_types", "attribute_map")}
                if len(found) == 2:
                    tables[node.name] = (found["openapi_types"], found["attribute_map"])
    return tables


def type_schema(name: str, pending: list[str]) -> dict:
    if name in PRIMITIVES:
        return PRIMITIVES[name]
    if match := re.fullmatch(r"list\[(.+)\]", name):
        return {"type": "array", "items": type_schema(match.group(1), pending)}
    if match := re.fullmatch(r"dict\(str, (.+)\)", name):
        return {"type": "object", "additionalProperties": type_schema(match.group(1), pending)}
    if name in KUBERNETES_TYPES:
        return {"$ref": KUBERNETES + KUBERNETES_TYPES[name]}
    if name.startswith("V1beta1") or name.startswith("V1alpha1"):
        pending.append(name)
        return {"$ref": f"#/$defs/{name}"}
    if match := QUALIFIED.fullmatch(name):
        group, version, kind = match.groups()
        return {"$ref": f"{KUBERNETES}io.k8s.api.{group.lower()}.{version.lower()}.{kind}"}
    if name.startswith("V1"):
        return {"$ref": KUBERNETES + "io.k8s.api.core.v1." + name[2:]}
    raise ValueError(f"no schema for SDK type {name!r}")


def inference_service_schema(models: Path) -> dict:
    tables = model_tables(models)
    definitions, pending = {}, ["V1beta1InferenceServiceSpec"]
    while pending:
        name = pending.pop()
        if name in definitions:
            continue
        types, keys = tables[name]
        definitions[name] = {"type": "object", "additionalProperties": False,
                             "properties": {keys[attr]: type_schema(kind, pending) for attr, kind in types.items()}}
    definitions["V1beta1InferenceServiceSpec"]["required"] = ["predictor"]
    # The $id puts it beside the Kubernetes schemas, whose references are relative (/api/_definitions.json).
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://kubernetes.io/api/inferenceservice/serving.kserve.io/v1beta1",
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
            "properties": {"apiVersion": {"const": "serving.kserve.io/v1beta1"}, "kind": {"const": "InferenceService"},
                           "metadata": {"$ref": KUBERNETES + KUBERNETES_TYPES["V1ObjectMeta"]},
                           "spec": {"$ref": "#/$defs/V1beta1InferenceServiceSpec"}},
            "$defs": dict(sorted(definitions.items()))}


if __name__ == "__main__":
    print(json.dumps(inference_service_schema(Path(sys.argv[1])), indent=1, sort_keys=False))

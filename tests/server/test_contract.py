"""The API contract: /openapi.json is a valid OpenAPI 3 document, and a property-based fuzzer
(schemathesis) finds no 5xx and no response that breaks the document."""
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)


def test_openapi_document_is_valid(server):
    validate(requests.get(server.url + "/openapi.json").json())


def test_fuzzing_finds_no_server_error_or_contract_break(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {o.label for o in operations} >= {"POST /api/v1/captions", "GET /api/v1/model", "GET /healthz", "GET /readyz"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case):
            case.call_and_validate(checks=checks, timeout=30)

        call()


def test_schemathesis_with_every_check_passes_against_the_live_server(server):
    """`st run --checks all`, as a user would run it (schemathesis.toml says which statuses the
    document allows where JSON Schema cannot describe an image)."""
    import subprocess
    import sys
    from pathlib import Path

    from harness.server_process import ROOT

    st = Path(sys.executable).with_name("st")
    result = subprocess.run([str(st), "run", server.url + "/openapi.json", "--checks", "all", "--max-examples", "40",
                             "--request-timeout", "30", "--no-color"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]

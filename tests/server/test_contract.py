"""The API contract: /openapi.json is a valid OpenAPI 3 document, and a property-based fuzzer
(schemathesis, every check) finds no 5xx, no response that breaks the document, nothing accepted
that it forbids, and nothing it allows mostly refused."""
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from openapi_spec_validator import validate

from harness.server_process import ROOT


def test_openapi_document_is_valid(server):
    validate(requests.get(server.url + "/openapi.json").json())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_schemathesis_with_every_check_passes_against_the_live_server(server, seed):
    """`st run --checks all`, as a user would run it from the project root (schemathesis.toml says which
    statuses the document allows where JSON Schema cannot describe an image, and has real images drawn
    for base64 image elements), with several seeds: each finds nothing, and no operation mostly
    rejects what the fuzzer generates from the document."""
    st = Path(sys.executable).with_name("st")
    result = subprocess.run([str(st), "run", server.url + "/openapi.json", "--checks", "all", "--max-examples", "50",
                             "--seed", str(seed), "--request-timeout", "30", "--no-color"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    summary = result.stdout.split("SUMMARY")[-1]
    assert result.returncode == 0, result.stdout[-4000:]
    assert "passed" in summary and "failed" not in summary and "mostly rejected" not in result.stdout, result.stdout[-4000:]

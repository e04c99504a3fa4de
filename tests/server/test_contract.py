"""The API contract: /openapi.json is a valid OpenAPI 3 document, and a property-based fuzzer
(schemathesis, every check) finds no 5xx, no response that breaks the document, nothing accepted
that it forbids, and nothing it allows mostly refused."""
import subprocess
import sys
from pathlib import Path

import requests
from openapi_spec_validator import validate

from harness.server_process import ROOT
from tests.conftest import API_KEYS


def test_openapi_document_is_valid(server):
    validate(requests.get(server.url + "/openapi.json").json())


SEEDS = (1, 2, 3)


def test_schemathesis_with_every_check_passes_against_the_live_server(server, keyed_server):
    """`st run --checks all`, as a user would run it from the project root (schemathesis.toml says which
    statuses the document allows where JSON Schema cannot describe an image, and has real images drawn
    for base64 image elements), with several seeds at once: each finds nothing, and no operation mostly
    rejects what the fuzzer generates from the document. The coverage phase does not depend on the seed:
    the first run alone has it. The other seeds fuzz a server with API keys, the key given: its document
    marks the routes that need one, and `ignored_auth` checks that each refuses a request without it."""
    st = Path(sys.executable).with_name("st")

    def target(seed: int) -> list[str]:
        if seed == SEEDS[0]:
            return [server.url + "/openapi.json"]
        return [keyed_server.url + "/openapi.json", "--header", f"Authorization: Bearer {API_KEYS[0]}",
                "--phases", "examples,fuzzing,stateful"]

    runs = {seed: subprocess.Popen([str(st), "run", *target(seed), "--checks", "all", "--max-examples",
                                    "50", "--seed", str(seed), "--request-timeout", "30", "--no-color"],
                                   cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for seed in SEEDS}
    for seed, run in runs.items():
        out, _ = run.communicate(timeout=600)
        summary = out.split("SUMMARY")[-1]
        assert run.returncode == 0, (seed, out[-4000:])
        assert "passed" in summary and "failed" not in summary and "mostly rejected" not in out, (seed, out[-4000:])

"""Fill the generated parts of README.md and docs/*.md from the one place each fact lives: the
configuration from server/config.py and server/process_settings.py, the API's routes from its
OpenAPI document, the notebook zoo from training/notebook_zoo.py, and every figure from
benchmarks/results/*.json (through the same functions that write benchmarks/results/*.md).

Usage: python -m docs.generate           rewrite the generated parts (and results/*.md) in place
       python -m docs.generate --check   only say which are stale; exit 1 if any is

A generated part sits between `<!-- generated: NAME -->` and `<!-- end generated -->`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)
# results/<name>.md is written from results/<name>.json by <module>.markdown
RESULT_PAGES = {**{name: f"benchmarks.{name}" for name in ("latency", "http", "layouts", "gpu", "ray_batch",
                                                           "reliability", "notebook", "peers", "request_path",
                                                           "perf_analyzer", "tracing_cost", "build_time",
                                                           "import_memory", "encoder_options")},
                "quality": "tests.quality.score_http", "learning_curves": "training.curves"}


def _results(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _result_markdown(name: str) -> str:
    return importlib.import_module(RESULT_PAGES[name]).markdown(_results(name))


def _without_title(text: str) -> str:
    """A results page's body, for embedding under a heading of a page in docs/ (its title dropped,
    its relative links pointed back at benchmarks/results/)."""
    text = re.sub(r"\A# [^\n]*\n\n", "", text)
    return re.sub(r"\]\((?!https?:|#|\.\./)([^)]+)\)", r"](../benchmarks/results/\1)", text)


def config_reference() -> str:
    from server.config import Config
    from server.process_settings import PROCESS_SETTINGS

    def shown(value) -> str:
        if isinstance(value, bool):
            return "`1`" if value else "`0`"
        return f"`{value}`" if str(value) != "" else "(none)"

    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `CAPTION_{f.name.upper()}` | {shown(f.default)} | {f.metadata['meaning']} |" for f in fields(Config)]
    rows += [f"| `{s.name}` | {shown(s.default)} | {s.meaning} |" for s in PROCESS_SETTINGS]
    return "\n".join(rows) + "\n"


def api_routes(protocol: bool = False) -> str:
    """The routes of the OpenAPI document: the JSON API's, or (`protocol`) the Open Inference Protocol's."""
    from server.config import Config
    from server.answers import is_protocol_path
    from server.openapi import openapi_document

    document = openapi_document(Config(), max_length=20, models=["demo"], attending=["demo"])
    rows = ["| route | what it does |", "| --- | --- |"]
    for path, operations in document["paths"].items():
        if is_protocol_path(path) != protocol:
            continue
        for method, operation in operations.items():
            rows.append(f"| `{method.upper()} {path}` | {operation['summary']} |")
    return "\n".join(rows) + "\n"


def api_parameters() -> str:
    from server.config import Config
    from server.openapi import openapi_document

    document = openapi_document(Config(), max_length=20, models=["demo"], attending=["demo"])
    operation = document["paths"]["/api/v1/captions"]["post"]
    rows = ["| parameter | values | default | meaning |", "| --- | --- | --- | --- |"]
    for parameter in operation["parameters"]:
        schema = parameter["schema"]
        values = ("1 to the model's longest" if parameter["name"] == "max_length"
                  else f"{schema['minimum']} to {schema['maximum']}" if "maximum" in schema
                  else "a served model's name" if "enum" in schema
                  else "`true` or `false`" if schema["type"] == "boolean" else schema["type"])
        default = "the model's own" if parameter["name"] == "max_length" else \
            "the default model" if parameter["name"] == "model" else f"`{json.dumps(schema['default'])}`"
        rows.append(f"| `{parameter['name']}` | {values} | {default} | {schema['description']} |")
    return "\n".join(rows) + "\n"


def cpu_paths() -> str:
    """README's short table: which path on which machine, with one measured figure each."""
    from benchmarks import summary

    latency, http = summary._load("latency", RESULTS), summary._load("http", RESULTS)
    measured = {label: value for label, value, _, _ in summary.targets(latency, http)}
    gpu = _results("gpu")
    single = "single image over HTTP, p50 / floor "
    chosen = http["layouts"][http["default_layout"]][0]["execution_path"] if http.get("default_layout") else None

    def figure(label: str) -> str:
        return f"{measured[single + label]} the fp32 floor" if single + label in measured else "-"

    rows = ["| path | on | how | measured (latest `make bench`) |", "| --- | --- | --- | --- |"]
    if chosen:
        rows.append(f"| the fastest gated path (here: {chosen}) | any | nothing to set: `make serve` | "
                    f"{figure(f'(as make serve starts it: {chosen})')}, one image over HTTP |")
    rows += [f"| onnxruntime fp32 | any x86-64 CPU | `CAPTION_PROVIDERS=cpu` | "
             f"{measured[single + '(fp32)']} the encoder's compute floor, one image over HTTP |",
             f"| OpenVINO bf16 | CPUs with AVX512_BF16 or AMX | chosen where fastest once its quality gate passed "
             f"(`make demo` runs it; your bundle: `python -m export.openvino_check`) | "
             f"{figure('(bf16 encoder, OpenVINO)')} |",
             f"| int8 encoder, on OpenVINO or onnxruntime | fastest with VNNI or AMX | chosen where fastest once its "
             f"quality gate passed (`make demo` attaches it; your bundle: `python -m export.int8 --attach`) | "
             f"{figure('(int8 encoder, OpenVINO)')} |",
             f"| CUDA, CUDA graphs | an NVIDIA GPU, driver 580+ | `make install-gpu` | "
             f"greedy caption {gpu['caption']['fp32, CUDA graphs']['greedy']['p50']} ms in-process "
             f"({gpu['device'].split(',')[0].removeprefix('GPU ')}) |"]
    return "\n".join(rows) + "\n"


def blocks() -> dict:
    """name -> function making that part's text."""
    from training.notebook_zoo import markdown_table

    made = {"config": config_reference, "api-routes": api_routes, "api-parameters": api_parameters,
            "protocol-routes": lambda: api_routes(protocol=True),
            "cpu-paths": cpu_paths, "zoo": markdown_table, "summary": lambda: _without_title(_summary()),
            "peers-headline": lambda: importlib.import_module("benchmarks.peers").headline(_results("peers"))}
    for name in RESULT_PAGES:
        made[f"results-{name.replace('_', '-')}"] = lambda name=name: _without_title(_result_markdown(name))
    return made


def _summary() -> str:
    from benchmarks import summary

    latency, http = summary._load("latency", RESULTS), summary._load("http", RESULTS)
    return summary.markdown(summary.targets(latency, http), latency, http)


def stale(write: bool) -> list[str]:
    """Every generated part (and results page) that differs from its source; rewritten when `write`."""
    made, found = blocks(), []
    for page in PAGES:
        text = page.read_text()

        def fill(match):
            name = match["name"]
            if name not in made:
                found.append(f"{page.relative_to(ROOT)}: unknown generated part {name!r}")
                return match[0]
            body = made[name]()
            if body != match["body"]:
                found.append(f"{page.relative_to(ROOT)}: {name}")
            return match[1] + body + match[4]

        new = BLOCK.sub(fill, text)
        if write and new != text:
            page.write_text(new)
    for name in RESULT_PAGES:
        page = RESULTS / f"{name}.md"
        if not page.exists() or page.read_text() != _result_markdown(name):
            found.append(f"benchmarks/results/{name}.md: differs from {name}.json")
            if write:
                page.write_text(_result_markdown(name))
    summary_page = RESULTS / "summary.md"
    if summary_page.read_text() != _summary():
        found.append("benchmarks/results/summary.md: differs from latency.json and http.json")
        if write:
            summary_page.write_text(_summary())
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a generated part is stale")
    args = parser.parse_args(argv)
    found = stale(write=not args.check)
    for line in found:
        print(("stale: " if args.check else "rewrote: ") + line)
    return 1 if (args.check and found) else 0


if __name__ == "__main__":
    sys.exit(main())

# Everything a fresh machine needs: `make serve` and `make test` install what they use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
PIDFILE ?= caption-server.pid
DEMO_IMAGES ?= 1500
DEMO_CONFIG := training/configs/demo.json
DEMO_BUNDLE := onnx_models/demo/bundle.json

.PHONY: grpc-stubs prometheus perf-analyzer serve test test-fast test-budget quality demo demo-fp16 demo-int8 bench bench-peers peers-install install install-gpu install-openvino install-ray openvino-check openvino-check-int8 browser clean-demo

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# One stamp per requirements set, rebuilt when its files change. `make serve` installs what building
# and serving the demo need (training, export, OpenVINO: a third less time than the whole set, which
# counts against the first-run budget); the tests, benchmarks and peers add the rest.
$(VENV)/.installed-serve: requirements-train.txt requirements-server.txt requirements-openvino.txt pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements-train.txt -r requirements-openvino.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt requirements-keras2.txt requirements-ray.txt requirements-peers.txt $(VENV)/.installed-serve
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-keras2.txt
	touch $@

install: $(VENV)/.installed-dev

# The built-in demo: synthetic scenes -> attention decoder -> ONNX bundle. No repeated 4-gram: two objects
# of one size and colour make a right caption say "a small red" twice, so 3 would be too strict.
$(DEMO_BUNDLE): $(DEMO_CONFIG) | $(VENV)/.installed-serve
	$(PY) -m training.synthetic --out data/shapes --images $(DEMO_IMAGES) --seed 0
	$(PY) -m training.train --dataset shapes --data data/shapes --out runs/demo --config $(DEMO_CONFIG) --quiet
	$(PY) -m export --run runs/demo --out onnx_models/demo --no-repeat-ngram-size 4
	@# The bf16 encoder's quality gate, so that the server may choose it (server/path_choice.py): exit 1
	@# (it failed: recorded, and the server keeps off it) and 2 (no bf16 or no OpenVINO here) are not errors.
	$(PY) -m export.openvino_check --bundle onnx_models/demo --run runs/demo; [ $$? -le 2 ]
	@# The int8 encoder, quantised with accuracy control and judged on 100 held-out scenes (50 others
	@# calibrate it), attached to the bundle for the server to choose where it is fastest. Refused (exit 1:
	@# recorded, and the server keeps off it) is not an error either.
	$(PY) -m export.int8 --bundle onnx_models/demo --run runs/demo --attach --images 100 --calibration-images 50; [ $$? -le 1 ]

demo: $(DEMO_BUNDLE)

# The demo's fp16 variant, for GPUs (about a minute: conversion, then its 150 held-out captions checked).
onnx_models/demo-fp16/bundle.json: $(DEMO_BUNDLE)
	$(PY) -m export.fp16 --bundle onnx_models/demo --run runs/demo --out onnx_models/demo-fp16

demo-fp16: onnx_models/demo-fp16/bundle.json

# The demo's int8 variant, for CPUs (half a minute). Refused when its held-out quality is more than
# bundle.format.MAX_QUALITY_LOSS below fp32's unless INT8_MAX_QUALITY_LOSS says otherwise;
# make bench sets it to 1 (no gate) to measure the speed. Of the demo's 150 held-out scenes, 100 judge it
# and 50 calibrate it.
onnx_models/demo-int8/bundle.json: $(DEMO_BUNDLE)
	$(PY) -m export.int8 --bundle onnx_models/demo --run runs/demo --out onnx_models/demo-int8 \
	  --images 100 --calibration-images 50 $(if $(INT8_MAX_QUALITY_LOSS),--max-quality-loss $(INT8_MAX_QUALITY_LOSS))

demo-int8: onnx_models/demo-int8/bundle.json

# The gRPC protocol's Python modules from Triton's .proto files (triton-inference-server/common,
# protobuf/); committed, and checked against a fresh generation by tests/server/test_grpc_protocol.py.
grpc-stubs: $(VENV)/.installed-dev
	$(PY) -m grpc_tools.protoc -I server/grpc_protocol/protos --python_out=server/grpc_protocol \
	  --grpc_python_out=server/grpc_protocol grpc_service.proto model_config.proto
	rm -f server/grpc_protocol/model_config_pb2_grpc.py

# onnxruntime-gpu in place of onnxruntime (both install the same module, so one goes first).
install-gpu: $(VENV)/.installed-dev
	$(PY) -m pip uninstall --quiet --yes onnxruntime
	$(PY) -m pip install --quiet -r requirements-gpu.txt

# OpenVINO for the encoder in bf16 on CPUs that have it (CAPTION_PROVIDERS=openvino,cpu).
install-openvino: $(VENV)/.installed-dev
	$(PY) -m pip install --quiet -r requirements-openvino.txt

# Ray Data for batch captioning across many cores or machines (`caption --ray`).
install-ray: $(VENV)/.installed-dev
	$(PY) -m pip install --quiet -r requirements-ray.txt

# The bf16 encoder's quality gate on the demo's held-out scenes; the figures go into its bundle.json.
openvino-check: install-openvino $(DEMO_BUNDLE)
	$(PY) -m export.openvino_check --bundle onnx_models/demo --run runs/demo

# The int8 variant on OpenVINO (its quantised operators in int8 on VNNI, the rest in bf16), gated
# against the float32 demo on the same held-out scenes; the figures go into the variant's bundle.json.
openvino-check-int8: install-openvino onnx_models/demo-int8/bundle.json
	$(PY) -m export.openvino_check --bundle onnx_models/demo-int8 --reference onnx_models/demo --run runs/demo

# The demo's quality on scenes drawn by code other than the generator (tests/quality), through the HTTP API;
# recorded in benchmarks/results/quality.json, which docs/demo-model.md shows. Fails (after recording)
# when the demo is below its documented targets.
quality: $(VENV)/.installed-dev $(DEMO_BUNDLE)
	$(PY) -m tests.quality.score_http --bundle onnx_models/demo --show --results benchmarks/results/quality.json \
	  --require; status=$$?; $(PY) -m docs.generate && exit $$status

serve: $(VENV)/.installed-serve $(DEMO_BUNDLE)
	PORT=$(PORT) PIDFILE=$(PIDFILE) $(VENV)/bin/gunicorn -c gunicorn.conf.py

# The browser test drives Debian's Chromium (Playwright's own browser download is not reachable here).
browser:
	@command -v chromium >/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "error: the browser test needs Debian's chromium: sudo apt-get install chromium" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

# The dashboard test runs Debian's Prometheus against a live server (deploy/grafana).
prometheus:
	@command -v prometheus >/dev/null || { \
	  [ "$$(id -u)" = 0 ] || { echo "error: the dashboard test needs Debian's prometheus: sudo apt-get install prometheus" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

# Triton's perf_analyzer (from tritonclient 2.50.0's wheel) and the Debian library it links.
PERF_ANALYZER := .tools/perf_analyzer/bin/perf_analyzer
$(PERF_ANALYZER): | $(VENV)/.installed-dev
	@ldconfig -p | grep -q libb64.so.0d || { \
	  [ "$$(id -u)" = 0 ] || { echo "error: perf_analyzer needs Debian's libb64-0d: sudo apt-get install libb64-0d" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libb64-0d; }
	$(PY) -m benchmarks.perf_analyzer --install

perf-analyzer: $(PERF_ANALYZER)

test: $(VENV)/.installed-dev browser prometheus $(PERF_ANALYZER)
	$(PY) -m pytest -q

# The unit tests that need no trained model and no server (tests/README.md says which are slow).
test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "not slow"

# The suite and the fast tier against their time budgets on the slow machines (15 and 2 minutes at an
# sgemm peak of 200 GFLOP/s; tests/budget.py scales what they take here by this machine's peak).
test-budget: $(VENV)/.installed-dev browser prometheus $(PERF_ANALYZER)
	$(PY) -m tests.budget
	$(PY) -m tests.budget --fast

# The speed suite on the demo bundle (about 17 minutes): component latency against Keras, HTTP
# layouts x concurrency (fp32, the int8 variant, and both on OpenVINO where the processor has bf16),
# perf_analyzer over the Open Inference Protocol's REST and gRPC, the serving-layout study, imported notebook models against their own loop, then the target table and the
# docs' generated tables (python -m docs.generate).
# Results land in benchmarks/results/. Batch captioning on Ray: python -m benchmarks.ray_batch.
bench: $(VENV)/.installed-dev $(DEMO_BUNDLE) $(PERF_ANALYZER)
	$(MAKE) demo-int8 INT8_MAX_QUALITY_LOSS=1
	$(PY) -m benchmarks.latency
	$(PY) -m benchmarks.http
	$(PY) -m benchmarks.perf_analyzer
	$(PY) -m benchmarks.layouts
	$(PY) -m benchmarks.notebook
	$(PY) -m benchmarks.summary
	$(PY) -m docs.generate

# Triton (through PyTriton) for the peer comparison, in its own environment from Debian's Python
# (PyTriton's model stub fails under pyenv's 3.11.7, pytriton issue 51; it needs numpy < 2).
TRITON_VENV := .venv-triton
$(TRITON_VENV)/.installed: requirements-triton.txt
	/usr/bin/python3 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/pip install --quiet -r requirements-triton.txt
	touch $@

peers-install: $(TRITON_VENV)/.installed

# This server against Triton and LitServe, same bundle, same machine, alternating rounds (five,
# about 20 minutes): benchmarks/results/peers.{json,md,png}. Not part of make test.
bench-peers: $(VENV)/.installed-dev $(DEMO_BUNDLE) peers-install
	$(PY) -m benchmarks.peers
	$(PY) -m docs.generate

clean-demo:
	rm -rf data/shapes data/cache runs/demo onnx_models/demo onnx_models/demo-fp16 onnx_models/demo-int8

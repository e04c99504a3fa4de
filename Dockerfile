# The serving image: numpy + onnxruntime + Pillow + Flask + gunicorn, no TensorFlow, non-root.
# Build after `make demo` (the demo bundle is baked in):   docker build -t caption-server .
# Another bundle:   docker build --build-arg BUNDLE=onnx_models/mymodel -t caption-server .
# For GPUs:         docker build --build-arg GPU=1 --build-arg BUNDLE=onnx_models/demo-fp16 -t caption-server:gpu .
# Or mount one:     docker run -v $PWD/onnx_models/mymodel:/models/mymodel:ro -e CAPTION_BUNDLE=/models/mymodel ...
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements-server.txt requirements-gpu.txt requirements-openvino.txt ./
# A GPU image: --build-arg GPU=1 swaps onnxruntime for onnxruntime-gpu with NVIDIA's CUDA 13 and
# cuDNN 9 libraries; run it with `--gpus all -e CAPTION_PROVIDERS=cuda,cpu`.
ARG GPU=0
# A CPU image with OpenVINO: --build-arg OPENVINO=1; the server then chooses its bf16 or int8 encoder
# where the bundle's quality gates passed and they are fastest (docs/performance.md).
ARG OPENVINO=0
RUN pip install -r requirements-server.txt \
    && if [ "$GPU" = 1 ]; then pip uninstall -y onnxruntime && pip install -r requirements-gpu.txt; fi \
    && if [ "$OPENVINO" = 1 ]; then pip install -r requirements-openvino.txt; fi

COPY pyproject.toml gunicorn.conf.py ./
COPY bundle/ bundle/
COPY server/ server/
COPY batch/ batch/
RUN pip install --no-deps . \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin caption

ARG BUNDLE=onnx_models/demo
COPY ${BUNDLE}/ /models/default/

# The same settings `make serve` uses, except that the server listens on every interface.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    GRPC_PORT=8001 \
    WEB_CONCURRENCY=1 \
    LOG_FORMAT=json \
    CAPTION_BUNDLE=/models/default

USER 10001
EXPOSE 8000 8001
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py"]

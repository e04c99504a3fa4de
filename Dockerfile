# The serving image: numpy + onnxruntime + Pillow + Flask + gunicorn, no TensorFlow, non-root.
# Build after `make demo` (the demo bundle is baked in):   docker build -t caption-server .
# Another bundle:   docker build --build-arg BUNDLE=onnx_models/mymodel -t caption-server .
# Or mount one:     docker run -v $PWD/onnx_models/mymodel:/models/mymodel:ro -e CAPTION_BUNDLE=/models/mymodel ...
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements-server.txt ./
RUN pip install -r requirements-server.txt

COPY pyproject.toml gunicorn.conf.py ./
COPY server/ server/
RUN pip install --no-deps . \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin caption

ARG BUNDLE=onnx_models/demo
COPY ${BUNDLE}/ /models/default/

# The same settings `make serve` uses, except that the server listens on every interface.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    WEB_CONCURRENCY=1 \
    LOG_FORMAT=json \
    CAPTION_BUNDLE=/models/default

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py"]

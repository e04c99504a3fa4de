"""The caption engine as a model callable of NVIDIA Triton Inference Server, through PyTriton:
Triton's own HTTP front end (the Open Inference Protocol) and dynamic batcher (up to 16 images,
no queue delay, as this server batches), the image as a BYTES input, one model instance.

Runs in its own virtual environment (make peers-install; requirements-triton.txt): PyTriton
needs numpy < 2 and Debian's Python.

With --defaults, the model bound as PyTriton's docs bind it: ModelConfig() with nothing set (its
dynamic batcher, batches of up to 4).

Usage: python -m benchmarks.peer_servers.triton_server HTTP_PORT GRPC_PORT METRICS_PORT [--defaults]
POST /v2/models/caption/infer, input "image" (BYTES, [batch, 1]) -> output "caption" (BYTES)
"""
from __future__ import annotations

import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from .captioner import Captioner

MODEL = "caption"
MAX_BATCH_SIZE = 16


def main(argv=None) -> int:
    args = argv or sys.argv[1:]
    http_port, grpc_port, metrics_port = (int(a) for a in args[:3])
    captioner = Captioner()

    @batch
    def infer(image: np.ndarray):
        captions = captioner.captions([captioner.inputs(bytes(row[0])) for row in image])
        return {"caption": np.array([[c.encode()] for c in captions], dtype=object)}

    config = TritonConfig(http_address="127.0.0.1", http_port=http_port, grpc_address="127.0.0.1",
                          grpc_port=grpc_port, metrics_port=metrics_port, exit_on_error=True)
    with Triton(config=config) as triton:
        triton.bind(model_name=MODEL, infer_func=infer,
                    inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
                    outputs=[Tensor(name="caption", dtype=bytes, shape=(1,))],
                    config=ModelConfig() if "--defaults" in args else
                    ModelConfig(max_batch_size=MAX_BATCH_SIZE, batcher=DynamicBatcher(max_queue_delay_microseconds=0)),
                    strict=True)
        triton.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

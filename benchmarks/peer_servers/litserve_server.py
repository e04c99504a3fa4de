"""The caption engine behind LitServe, with its request batching: one inference worker (as this
server runs one), batches of up to 16 images gathered for at most 1 ms. (With batch_timeout 0,
which takes whatever has queued as this server and Triton do, LitServe's loop polls without
pausing: it took 0.96 of a core while idle, 0.14 with 1 ms, measured.)

With --defaults, LitServe as its docs start it: LitAPI() and LitServer(api) with nothing set (no
batching: one image per predict call).

Usage: python -m benchmarks.peer_servers.litserve_server PORT [--defaults]   (CAPTION_BUNDLE chooses the bundle)
POST /predict with a multipart field "image" -> {"caption": "..."}
"""
from __future__ import annotations

import sys

import litserve as ls

from .captioner import Captioner

MAX_BATCH_SIZE = 16
BATCH_TIMEOUT_S = 0.001


class CaptionAPI(ls.LitAPI):
    def setup(self, device):
        self.captioner = Captioner()

    def decode_request(self, request):
        return self.captioner.inputs(request["image"].file.read())

    def batch(self, inputs):
        return inputs

    def predict(self, inputs):
        if isinstance(inputs, list):
            return self.captioner.captions(inputs)
        return self.captioner.captions([inputs])[0]  # unbatched (LitServe's default)

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return {"caption": output}


def main(argv=None) -> int:
    args = argv or sys.argv[1:]
    port = int(args[0])
    if "--defaults" in args:
        server = ls.LitServer(CaptionAPI())
    else:
        api = CaptionAPI(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S)
        server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=30)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the decoder's state lives between steps: in numpy, or in fixed buffers on the GPU.

Both classes give decode_greedy/decode_beam what they need: `initial_state(features)`,
`step(tokens, state)` and `select(state, rows)`.

On CUDA, `BoundDecoder` keeps h, c and context in buffers that never move (onnxruntime IO
binding), which lets onnxruntime capture the decoder step as a CUDA graph and replay its ~30
kernels with one launch. Measured on an H100, 12 greedy steps took 2.28 ms with plain `run`,
2.36 ms with IO binding alone and 1.00 ms with CUDA graphs (4.73 / 4.34 / 1.29 ms for 8
images): the binding only pays through the graph.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .decoding import select_rows

STATE = ("h", "c", "context")


class HostDecoder:
    """The state comes back to numpy after every step (the right choice on CPU)."""

    def __init__(self, init: ort.InferenceSession, step: ort.InferenceSession):
        self.init_session, self.step_session = init, step
        self.lock = None  # sessions are safe to run from several threads at once

    def initial_state(self, features: np.ndarray) -> tuple:
        return tuple(self.init_session.run(list(STATE), {"features": features}))

    def step(self, tokens: np.ndarray, state: tuple):
        h, c, context = state
        log_probs, h, c = self.step_session.run(
            ["log_probs", "h_next", "c_next"], {"token": tokens, "h": h, "c": c, "context": context})
        return log_probs, (h, c, context)

    select = staticmethod(select_rows)


@dataclass
class _Buffers:
    """Everything one batch size needs: the inputs, two copies of h and c (a step reads one copy
    and writes the other), and one binding plus run options per direction."""

    token: ort.OrtValue
    context: ort.OrtValue
    h: tuple
    c: tuple
    log_probs: ort.OrtValue
    bindings: tuple
    run_options: tuple


class BoundDecoder:
    """The state in fixed buffers on `device`; with `cuda_graphs`, each (batch size, direction)
    step is captured once and replayed. On "cpu" the same buffers and bindings run without graphs,
    which is how this path is tested on machines without a GPU."""

    def __init__(self, init: ort.InferenceSession, step: ort.InferenceSession, vocab_size: int,
                 device: str, device_id: int = 0, cuda_graphs: bool = False):
        self.init_session, self.step_session = init, step
        self.vocab_size, self.device, self.device_id, self.cuda_graphs = vocab_size, device, device_id, cuda_graphs
        self.units = {i.name: i.shape for i in step.get_inputs()}["h"][1]
        self.buffers: dict[int, _Buffers] = {}
        self.lock = threading.Lock()  # one caption at a time: every caption of a batch size shares its buffers

    def _empty(self, shape, dtype) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, self.device, self.device_id)

    def _buffers_for(self, n: int, embedding: int) -> _Buffers:
        if n not in self.buffers:
            token, context = self._empty((n, 1), np.int32), self._empty((n, embedding), np.float32)
            h = (self._empty((n, self.units), np.float32), self._empty((n, self.units), np.float32))
            c = (self._empty((n, self.units), np.float32), self._empty((n, self.units), np.float32))
            log_probs = self._empty((n, self.vocab_size), np.float32)
            bindings, run_options = [], []
            for read in (0, 1):
                binding = self.step_session.io_binding()
                binding.bind_ortvalue_input("token", token)
                binding.bind_ortvalue_input("context", context)
                binding.bind_ortvalue_input("h", h[read])
                binding.bind_ortvalue_input("c", c[read])
                binding.bind_ortvalue_output("log_probs", log_probs)
                binding.bind_ortvalue_output("h_next", h[1 - read])
                binding.bind_ortvalue_output("c_next", c[1 - read])
                options = ort.RunOptions()
                if self.cuda_graphs:
                    options.add_run_config_entry("gpu_graph_id", str(2 * n + read))
                bindings.append(binding)
                run_options.append(options)
            self.buffers[n] = _Buffers(token, context, h, c, log_probs, tuple(bindings), tuple(run_options))
        return self.buffers[n]

    def _load(self, h: np.ndarray, c: np.ndarray, context: np.ndarray) -> tuple[int, int]:
        buffers = self._buffers_for(len(h), context.shape[1])
        buffers.h[0].update_inplace(np.ascontiguousarray(h))
        buffers.c[0].update_inplace(np.ascontiguousarray(c))
        buffers.context.update_inplace(np.ascontiguousarray(context))
        return len(h), 0  # the state: which batch size's buffers, and which copy holds h and c

    def initial_state(self, features: np.ndarray) -> tuple[int, int]:
        return self._load(*self.init_session.run(list(STATE), {"features": features}))

    def step(self, tokens: np.ndarray, state: tuple[int, int]):
        n, read = state
        buffers = self.buffers[n]
        buffers.token.update_inplace(np.ascontiguousarray(tokens, dtype=np.int32))
        self.step_session.run_with_iobinding(buffers.bindings[read], buffers.run_options[read])
        return buffers.log_probs.numpy(), (n, 1 - read)

    def select(self, state: tuple[int, int], rows: np.ndarray) -> tuple[int, int]:
        """Beam reordering goes through the host: a few kilobytes, once per step."""
        n, read = state
        buffers = self.buffers[n]
        return self._load(buffers.h[read].numpy()[rows], buffers.c[read].numpy()[rows],
                          buffers.context.numpy()[rows])

"""The bundle's graphs as decoding needs them, over anything with onnxruntime's `run(outputs, feeds)`.

Tensor names come from the manifest (looked up by key), never from literals, and the decoder
state follows the rule in bundle.specs: decoder_init gives every state tensor, decoder_step
updates those it returns as "<key>_next" and the rest are carried as they are. The server,
export parity and the variant checks all decode through these classes.
"""
from __future__ import annotations

import numpy as np

from .decoding import select_rows
from .specs import ATTENTION, NEXT


def tensor_names(graph: dict, side: str) -> dict[str, str]:
    """key -> ONNX name of a manifest graph's "inputs" or "outputs"."""
    return {entry["key"]: entry["name"] for entry in graph[side]}


class SessionEncoder:
    """`encoder(images) -> features` over the encoder session."""

    def __init__(self, session, graphs: dict):
        self.session = session
        self.image = tensor_names(graphs["encoder"], "inputs")["image"]
        self.features = tensor_names(graphs["encoder"], "outputs")["features"]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.features], {self.image: images})[0]


class DecoderState:
    """The decoder graphs' tensor names and how the state moves from step to step."""

    def __init__(self, graphs: dict):
        init_in, init_out = tensor_names(graphs["decoder_init"], "inputs"), tensor_names(graphs["decoder_init"], "outputs")
        step_in, step_out = tensor_names(graphs["decoder_step"], "inputs"), tensor_names(graphs["decoder_step"], "outputs")
        self.features = init_in["features"]
        self.keys = list(init_out)                         # the state, in decoder_init's output order
        self.init_outputs = [init_out[k] for k in self.keys]
        missing = [k for k in self.keys if k not in step_in]
        if missing:
            raise ValueError(f"decoder_step takes no {', '.join(missing)} (decoder_init outputs them)")
        self.token = step_in["token"]
        self.step_inputs = {k: step_in[k] for k in self.keys}
        self.log_probs = step_out["log_probs"]
        self.updated = [k for k in self.keys if k + NEXT in step_out]   # state the step changes
        self.next_names = {k: step_out[k + NEXT] for k in self.updated}
        self.step_outputs = [self.log_probs] + list(self.next_names.values())
        self.attention = step_out.get(ATTENTION)          # None: the step does not say where it looked
        self.attention_positions = next((e["shape"][-1] for e in graphs["decoder_step"]["outputs"]
                                         if e["key"] == ATTENTION), 0)


class SessionDecoder:
    """`initial_state(features)`, `step(tokens, state)` and `select(state, rows)` over the decoder
    sessions; the state comes back to numpy after every step (the right choice on a CPU)."""

    def __init__(self, init, step, graphs: dict):
        self.init_session, self.step_session = init, step
        self.names = DecoderState(graphs)
        self.lock = None  # sessions are safe to run from several threads at once

    def initial_state(self, features: np.ndarray) -> tuple:
        return tuple(self.init_session.run(self.names.init_outputs, {self.names.features: features}))

    def _run(self, tokens: np.ndarray, state: tuple, also: list[str]):
        names = self.names
        feeds = {names.token: tokens, **{names.step_inputs[k]: value for k, value in zip(names.keys, state)}}
        log_probs, *rest = self.step_session.run(names.step_outputs + also, feeds)
        new = dict(zip(names.updated, rest))
        return log_probs, tuple(new.get(k, value) for k, value in zip(names.keys, state)), rest[len(names.updated):]

    def step(self, tokens: np.ndarray, state: tuple):
        log_probs, state, _ = self._run(tokens, state, [])
        return log_probs, state

    def step_with_attention(self, tokens: np.ndarray, state: tuple):
        """step, and the attention weights [N, positions] the step read the image with."""
        log_probs, state, (attention,) = self._run(tokens, state, [self.names.attention])
        return log_probs, state, attention

    select = staticmethod(select_rows)

"""The caption engine: onnxruntime sessions for a bundle, and images -> captions.

Everything heavy (sessions, validation) happens once in the constructor; `caption` only
runs the graphs. One engine per process; onnxruntime sessions are safe to run from threads.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .bundle import GRAPHS, Bundle, BundleError
from .decoding import Hypothesis, decode_beam, decode_greedy
from .providers import resolve_providers

log = logging.getLogger(__name__)
ORT_TYPES = {"float32": "tensor(float)", "int32": "tensor(int32)", "int64": "tensor(int64)"}


@dataclass
class CaptionResult:
    """Hypotheses for each image (best first) and where the time went, in milliseconds."""

    hypotheses: list[list[Hypothesis]]
    timings_ms: dict[str, float]


def _check_signature(session: ort.InferenceSession, role: str, graph: dict) -> None:
    """The session's inputs and outputs must be exactly those the manifest describes."""
    for kind, actual, expected in (("input", session.get_inputs(), graph["inputs"]),
                                   ("output", session.get_outputs(), graph["outputs"])):
        got = [(a.name, a.type, [d if isinstance(d, int) else "batch" for d in a.shape]) for a in actual]
        want = [(e["name"], ORT_TYPES.get(e["dtype"], e["dtype"]),
                 [d if isinstance(d, int) else "batch" for d in e["shape"]]) for e in expected]
        if got != want:
            raise BundleError(f"{role} graph {kind}s {got} do not match bundle.json {want}")


class CaptionEngine:
    """Captions decoded RGB images with a bundle's encoder and decoder graphs."""

    def __init__(self, bundle: Bundle, config):
        self.bundle = bundle
        m = bundle.manifest
        self.preprocessing = m["preprocessing"]
        self.max_length = int(m["max_length"])
        self.start_id = int(m["special_tokens"]["start"])
        self.end_id = int(m["special_tokens"]["end"])
        self.special_ids = set(int(v) for v in m["special_tokens"].values())
        self.providers = resolve_providers(config.provider_list, ort.get_available_providers(),
                                           config.strict_providers)
        self.sessions = {}
        for role in GRAPHS:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # The decoder graphs are a few small matrix products per step: one thread runs them
            # fastest. Their own thread pools, spinning after each step, took the cores from the
            # encoder and doubled the caption latency (60 ms -> 29 ms measured on 2 cores).
            options.intra_op_num_threads = config.intra_op_threads if role == "encoder" else 1
            options.inter_op_num_threads = config.inter_op_threads
            options.log_severity_level = 3
            path = bundle.graph_file(role, config.use_optimized_graphs)
            try:
                session = ort.InferenceSession(str(path), options, providers=self.providers)
            except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
                raise BundleError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
            _check_signature(session, role, m["graphs"][role])
            self.sessions[role] = session
        self.active_providers = self.sessions["encoder"].get_providers()
        log.info("loaded bundle %s on %s", bundle.name, ", ".join(self.active_providers))

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Encoder features for a batch of preprocessed images [N, H, W, 3]."""
        return self.sessions["encoder"].run(["features"], {"image": images})[0]

    def initial_state(self, features: np.ndarray) -> tuple:
        return tuple(self.sessions["decoder_init"].run(["h", "c", "context"], {"features": features}))

    def step(self, tokens: np.ndarray, state: tuple):
        """One decoder step: the contract decode_greedy/decode_beam expect."""
        h, c, context = state
        log_probs, h, c = self.sessions["decoder_step"].run(
            ["log_probs", "h_next", "c_next"], {"token": tokens, "h": h, "c": c, "context": context})
        return log_probs, (h, c, context)

    def caption(self, images: np.ndarray, beam_size: int = 1, max_length: int | None = None,
                length_penalty: float = 0.0) -> CaptionResult:
        """Caption a batch of preprocessed images; all beams of all images share each step call."""
        max_length = min(max_length or self.max_length, self.max_length)
        started = time.perf_counter()
        features = self.encode(images)
        encoded = time.perf_counter()
        state = self.initial_state(features)
        if beam_size == 1:
            hypotheses = [[h] for h in decode_greedy(self.step, state, len(images), self.start_id, self.end_id,
                                                     max_length)]
        else:
            hypotheses = decode_beam(self.step, state, len(images), self.start_id, self.end_id, max_length,
                                     beam_size, length_penalty)
        done = time.perf_counter()
        return CaptionResult(hypotheses, {"encode": (encoded - started) * 1e3, "decode": (done - encoded) * 1e3})

    def words(self, tokens: list[int]) -> list[str]:
        return [self.bundle.words[t] for t in tokens if t not in self.special_ids]

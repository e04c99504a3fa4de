"""The caption engine: onnxruntime sessions for a bundle, and images -> captions.

Everything heavy (sessions, validation) happens once in the constructor; `caption` only
runs the graphs. One engine per process; onnxruntime sessions are safe to run from threads.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .bundle import GRAPHS, Bundle, BundleError
from .decoder_loop import BoundDecoder, HostDecoder
from .decoding import DEFAULT_LENGTH_PENALTY, Hypothesis, decode_beam, decode_greedy
from .encoder_binding import BoundEncoder
from .providers import check_active, decoder_providers, load_gpu_libraries, resolve_providers

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
        # onnxruntime's usage telemetry is on by default; a server records nothing about its traffic.
        ort.disable_telemetry_events()
        self.bundle = bundle
        m = bundle.manifest
        self.preprocessing = m["preprocessing"]
        self.max_length = int(m["max_length"])
        self.start_id = int(m["special_tokens"]["start"])
        self.end_id = int(m["special_tokens"]["end"])
        self.special_ids = set(int(v) for v in m["special_tokens"].values())
        self.providers = resolve_providers(config.provider_list, ort.get_available_providers(),
                                           config.strict_providers)
        if len(self.providers) > 1:
            load_gpu_libraries()
        self.sessions = {}
        for role in GRAPHS:
            path = bundle.graph_file(role, config.use_optimized_graphs)
            try:
                session = self._session(str(path), role, config)
            except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
                raise BundleError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
            _check_signature(session, role, m["graphs"][role])
            self.sessions[role] = session
        self.active_providers = self.sessions["encoder"].get_providers()
        check_active(self.providers, self.active_providers, config.strict_providers)
        self.encoder = self._encoder(config)
        self.decoder = self._decoder(config)
        log.info("loaded bundle %s: encoder on %s, decoder on %s; CUDA graphs: encoder %s, decoder %s", bundle.name,
                 ", ".join(self.active_providers), self.sessions["decoder_step"].get_providers()[0],
                 getattr(self.encoder, "cuda_graphs", False), getattr(self.decoder, "cuda_graphs", False))

    def _session(self, path: str, role: str, config, providers: list | None = None) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The decoder graphs are a few small matrix products per step: one thread runs them
        # fastest. Their own thread pools, spinning after each step, took the cores from the
        # encoder and doubled the caption latency (60 ms -> 29 ms measured on 2 cores).
        options.intra_op_num_threads = config.intra_op_threads if role == "encoder" else 1
        options.inter_op_num_threads = config.inter_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spinning else "0")
        options.enable_cpu_mem_arena = config.cpu_arena
        options.log_severity_level = 3
        if providers is None:
            providers = self.providers if role == "encoder" else decoder_providers(self.providers)
        return ort.InferenceSession(path, options, providers=providers)

    def _graph_session(self, role: str, config):
        """A CUDA-graph-enabled session for `role` on the same device, or None (with a warning) when
        onnxruntime cannot capture it (it refuses graphs with nodes it cannot place on CUDA)."""
        options = {**self.sessions[role].get_provider_options()["CUDAExecutionProvider"], "enable_cuda_graph": "1"}
        path = str(self.bundle.graph_file(role, config.use_optimized_graphs))
        try:
            return self._session(path, role, config, [("CUDAExecutionProvider", options)])
        except Exception as exc:  # onnxruntime's own exception types
            log.warning("%s cannot run as a CUDA graph (%s); running it plainly", role, str(exc).splitlines()[0])
            return None

    def _binding_mode(self, role: str, config) -> str | None:
        """Where `role` runs over fixed buffers: on "cuda" (as CUDA graphs), on "cpu" (tests), or None (plain run)."""
        on_cuda = self.sessions[role].get_providers()[0] == "CUDAExecutionProvider"
        if config.io_binding == "off" or (config.io_binding == "auto" and not on_cuda):
            return None
        return "cuda" if on_cuda else "cpu"

    def _encoder(self, config):
        plain = self.sessions["encoder"]
        mode = self._binding_mode("encoder", config)
        if mode == "cpu":
            return BoundEncoder(plain, plain, "cpu")
        if mode == "cuda" and (graph := self._graph_session("encoder", config)):
            return BoundEncoder(graph, plain, "cuda", self._device_id(plain), cuda_graphs=True)
        return lambda images: plain.run(["features"], {"image": images})[0]

    @staticmethod
    def _device_id(session: ort.InferenceSession) -> int:
        return int(session.get_provider_options()["CUDAExecutionProvider"].get("device_id", 0))

    def _decoder(self, config):
        """On CUDA, the decoder step replayed as a CUDA graph over fixed buffers; elsewhere numpy state."""
        init, step = self.sessions["decoder_init"], self.sessions["decoder_step"]
        mode = self._binding_mode("decoder_step", config)
        if mode == "cpu":
            return BoundDecoder(init, step, len(self.bundle.words), "cpu")
        if mode == "cuda" and (graph := self._graph_session("decoder_step", config)):
            return BoundDecoder(init, graph, len(self.bundle.words), "cuda", self._device_id(step), cuda_graphs=True)
        return HostDecoder(init, step)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Encoder features for a batch of preprocessed images [N, H, W, 3]."""
        return self.encoder(images)

    def caption(self, images: np.ndarray, beam_size: int = 1, max_length: int | None = None,
                length_penalty: float = DEFAULT_LENGTH_PENALTY) -> CaptionResult:
        """Caption a batch of preprocessed images; all beams of all images share each step call."""
        max_length = min(max_length or self.max_length, self.max_length)
        started = time.perf_counter()
        features = self.encode(images)
        encoded = time.perf_counter()
        with self.decoder.lock or nullcontext():
            state = self.decoder.initial_state(features)
            if beam_size == 1:
                hypotheses = [[h] for h in decode_greedy(self.decoder.step, state, len(images), self.start_id,
                                                         self.end_id, max_length)]
            else:
                hypotheses = decode_beam(self.decoder.step, state, len(images), self.start_id, self.end_id,
                                         max_length, beam_size, length_penalty, self.decoder.select)
        done = time.perf_counter()
        return CaptionResult(hypotheses, {"encode": (encoded - started) * 1e3, "decode": (done - encoded) * 1e3})

    def words(self, tokens: list[int]) -> list[str]:
        return [self.bundle.words[t] for t in tokens if t not in self.special_ids]

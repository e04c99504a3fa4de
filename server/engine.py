"""The caption engine: onnxruntime sessions for a bundle, and images -> captions.

Everything heavy (sessions, validation) happens once in the constructor; `caption` only
runs the graphs, through the contract's decoding (bundle.decoding, bundle.sessions). One engine
per model per process; onnxruntime sessions are safe to run from threads.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from bundle.decoding import DEFAULT_LENGTH_PENALTY, Hypothesis, decode_beam, decode_greedy
from bundle.format import Bundle, BundleError
from bundle.sessions import DecoderState, SessionDecoder, SessionEncoder
from bundle.specs import GRAPH_ROLES

from .bound_decoder import BoundDecoder
from .bound_encoder import BoundEncoder
from .openvino_encoder import OpenVINOEncoder, OpenVINOUnavailable
from .providers import ProviderError, check_active, decoder_providers, load_gpu_libraries, resolve_providers

log = logging.getLogger(__name__)
ORT_TYPES = {"float32": "tensor(float)", "int32": "tensor(int32)", "int64": "tensor(int64)"}


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs its graphs (the server fills these from its CAPTION_* settings)."""

    providers: tuple[str, ...] = ("cpu",)  # cpu, cuda, tensorrt in order of preference; "openvino" first
                                           # puts the encoder on OpenVINO (server/openvino_encoder.py)
    strict_providers: bool = False    # refuse, rather than fall back, when a requested provider is missing
    intra_op_threads: int = 0         # the encoder's onnxruntime threads; 0 = one per core
    inter_op_threads: int = 1
    spinning: bool = True             # idle encoder threads spin (faster wake-up, busier cores)
    cpu_arena: bool = True            # onnxruntime's CPU memory arena
    io_binding: str = "auto"          # fixed buffers + CUDA graph replay: auto (on CUDA), on, off
    use_optimized_graphs: bool = True  # the onnxruntime-optimised copy of each graph, when the bundle has one
    openvino_precision: str = "bf16"  # with "openvino" first: the encoder's precision, bf16 or f32
    openvino_cache_dir: str = ""      # where OpenVINO caches the compiled encoder; empty: no cache
    encoder_precision: str = "float32"  # or "int8": the bundle's attached int8 encoder (export.int8 --attach)


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

    def __init__(self, bundle: Bundle, options: EngineOptions = EngineOptions()):
        # onnxruntime's usage telemetry is on by default; a server records nothing about its traffic.
        ort.disable_telemetry_events()
        self.options = options
        self.bundle = bundle
        m = bundle.manifest
        self.preprocessing = bundle.preprocessing
        self.max_length = bundle.max_length
        self.start_id = bundle.special_tokens["start"]
        self.end_id = bundle.special_tokens["end"]
        self.no_repeat_ngram_size = bundle.no_repeat_ngram_size
        self.providers = resolve_providers([p for p in self.options.providers if p != "openvino"],
                                           ort.get_available_providers(), self.options.strict_providers)
        if len(self.providers) > 1:
            load_gpu_libraries()
        self.sessions = {}
        for role in GRAPH_ROLES:
            path = self._graph_path(role)
            try:
                session = self._session(str(path), role)
            except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
                raise BundleError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})") from None
            _check_signature(session, role, m["graphs"][role])
            self.sessions[role] = session
        try:
            DecoderState(m["graphs"])
        except (KeyError, ValueError) as exc:
            raise BundleError(f"{bundle.path}: bundle.json's decoder graphs break the state rule ({exc})") from None
        self.active_providers = self.sessions["encoder"].get_providers()
        check_active(self.providers, self.active_providers, self.options.strict_providers)
        self.encoder = self._openvino_encoder() or self._encoder()
        if isinstance(self.encoder, OpenVINOEncoder):
            self.active_providers = [self.encoder.provider, *self.active_providers]
        self.decoder = self._decoder()
        self.choice = None  # how the app chose its path (server/path_choice.Choice)
        if m.get("decoder", {}).get("kind") == "whole_prefix":
            # Imported from a model whose RNN does not mask padding (export.from_keras): exact, slower.
            log.info("bundle %s: decoder kind whole_prefix: every step re-runs the model on the whole padded "
                     "prefix, as the notebook did (about 5x the decoding time of stepping, measured on small GRUs)",
                     bundle.name)
        log.info("loaded bundle %s: %s encoder on %s, decoder on %s; CUDA graphs: encoder %s, decoder %s", bundle.name,
                 self.options.encoder_precision, ", ".join(self.active_providers), self.sessions["decoder_step"].get_providers()[0],
                 getattr(self.encoder, "cuda_graphs", False), getattr(self.decoder, "cuda_graphs", False))

    def _graph_path(self, role: str):
        """The file `role` runs from: the encoder in the precision asked for, the optimised copy where wanted."""
        if role == "encoder":
            return self.bundle.encoder_file(self.options.encoder_precision, self.options.use_optimized_graphs)
        return self.bundle.graph_file(role, self.options.use_optimized_graphs)

    def _session(self, path: str, role: str, providers: list | None = None) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The decoder graphs are a few small matrix products per step: one thread runs them
        # fastest. Their own thread pools, spinning after each step, took the cores from the
        # encoder and doubled the caption latency (60 ms -> 29 ms measured on 2 cores).
        options.intra_op_num_threads = self.options.intra_op_threads if role == "encoder" else 1
        options.inter_op_num_threads = self.options.inter_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options.spinning else "0")
        options.enable_cpu_mem_arena = self.options.cpu_arena
        options.log_severity_level = 3
        if providers is None:
            providers = self.providers if role == "encoder" else decoder_providers(self.providers)
        return ort.InferenceSession(path, options, providers=providers)

    def _graph_session(self, role: str):
        """A CUDA-graph-enabled session for `role` on the same device, or None (with a warning) when
        onnxruntime cannot capture it (it refuses graphs with nodes it cannot place on CUDA)."""
        options = {**self.sessions[role].get_provider_options()["CUDAExecutionProvider"], "enable_cuda_graph": "1"}
        path = str(self._graph_path(role))
        try:
            return self._session(path, role, [("CUDAExecutionProvider", options)])
        except Exception as exc:  # onnxruntime's own exception types
            log.warning("%s cannot run as a CUDA graph (%s); running it plainly", role, str(exc).splitlines()[0])
            return None

    def _binding_mode(self, role: str) -> str | None:
        """Where `role` runs over fixed buffers: on "cuda" (as CUDA graphs), on "cpu" (tests), or None (plain run)."""
        on_cuda = self.sessions[role].get_providers()[0] == "CUDAExecutionProvider"
        if self.options.io_binding == "off" or (self.options.io_binding == "auto" and not on_cuda):
            return None
        return "cuda" if on_cuda else "cpu"

    def _openvino_encoder(self) -> OpenVINOEncoder | None:
        """The encoder on OpenVINO when the providers ask for it first and it can run here; else None
        (with a warning), or ProviderError under strict_providers."""
        if not self.options.providers or self.options.providers[0] != "openvino":
            return None
        names = SessionEncoder(self.sessions["encoder"], self.bundle.manifest["graphs"])
        try:
            return OpenVINOEncoder(self.bundle.encoder_file(self.options.encoder_precision, optimized=False),
                                   names.image, names.features,
                                   self.options.openvino_precision, self.options.intra_op_threads,
                                   self.options.openvino_cache_dir)
        except OpenVINOUnavailable as exc:
            if self.options.strict_providers:
                raise ProviderError(f"OpenVINO {self.options.openvino_precision}: {exc}; "
                                    "set CAPTION_STRICT_PROVIDERS=0 to fall back to onnxruntime") from None
            log.warning("OpenVINO %s: %s; the encoder runs on onnxruntime", self.options.openvino_precision, exc)
            return None

    def _encoder(self):
        plain = self.sessions["encoder"]
        encoder = SessionEncoder(plain, self.bundle.manifest["graphs"])
        mode = self._binding_mode("encoder")
        if mode == "cpu":
            return BoundEncoder(plain, encoder, "cpu")
        if mode == "cuda" and (graph := self._graph_session("encoder")):
            return BoundEncoder(graph, encoder, "cuda", self._device_id(plain), cuda_graphs=True)
        return encoder

    @staticmethod
    def _device_id(session: ort.InferenceSession) -> int:
        return int(session.get_provider_options()["CUDAExecutionProvider"].get("device_id", 0))

    def _decoder(self):
        """On CUDA, the decoder step replayed as a CUDA graph over fixed buffers; elsewhere numpy state."""
        init, step = self.sessions["decoder_init"], self.sessions["decoder_step"]
        graphs, vocab_size = self.bundle.manifest["graphs"], len(self.bundle.words)
        mode = self._binding_mode("decoder_step")
        if mode == "cpu":
            return BoundDecoder(init, step, graphs, vocab_size, "cpu")
        if mode == "cuda" and (graph := self._graph_session("decoder_step")):
            return BoundDecoder(init, graph, graphs, vocab_size, "cuda", self._device_id(step), cuda_graphs=True)
        return SessionDecoder(init, step, graphs)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Encoder features for a batch of preprocessed images [N, H, W, 3]."""
        return self.encoder(images)

    @property
    def has_attention(self) -> bool:
        """Whether the decoder's step says where it looked (an attention decoder, exported with it)."""
        return self.decoder.names.attention is not None

    def caption(self, images: np.ndarray, beam_size: int = 1, max_length: int | None = None,
                length_penalty: float = DEFAULT_LENGTH_PENALTY, attention: bool = False) -> CaptionResult:
        """Caption a batch of preprocessed images; all beams of all images share each step call.
        With `attention` (has_attention must hold), each hypothesis carries its attention rows."""
        if attention and not self.has_attention:
            raise ValueError(f"bundle {self.bundle.name}: its decoder step outputs no attention weights")
        max_length = min(max_length or self.max_length, self.max_length)
        started = time.perf_counter()
        features = self.encode(images)
        encoded = time.perf_counter()
        with self.decoder.lock or nullcontext():
            state = self.decoder.initial_state(features)
            step = self.decoder.step_with_attention if attention else self.decoder.step
            if beam_size == 1:
                hypotheses = [[h] for h in decode_greedy(step, state, len(images), self.start_id, self.end_id,
                                                         max_length, self.no_repeat_ngram_size, attention)]
            else:
                hypotheses = decode_beam(step, state, len(images), self.start_id, self.end_id, max_length, beam_size,
                                         length_penalty, self.decoder.select, self.no_repeat_ngram_size, attention)
        done = time.perf_counter()
        return CaptionResult(hypotheses, {"encode": (encoded - started) * 1e3, "decode": (done - encoded) * 1e3})

    def words(self, tokens: list[int]) -> list[str]:
        return self.bundle.words_of(tokens)

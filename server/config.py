"""Server configuration from environment variables, validated once at start-up."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from bundle.decoding import DEFAULT_LENGTH_PENALTY

PROVIDER_NAMES = ("cpu", "cuda", "tensorrt", "openvino")
OPENVINO_PRECISIONS = ("bf16", "f32")
IO_BINDING = ("auto", "on", "off")
# Kubernetes gives every pod <SERVICE>_SERVICE_HOST, <SERVICE>_PORT, <SERVICE>_PORT_80_TCP_ADDR, ...
# for each Service of its namespace (unless enableServiceLinks is false): a Service named
# caption-server makes CAPTION_SERVER_*. Those are addresses, not settings, and are ignored.
SERVICE_LINK = re.compile(r"^[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(ADDR|PORT|PROTO))?)?)$")
INTEGER = re.compile(r"^-?[0-9]+$")


class ConfigError(ValueError):
    """A setting with a value the server cannot use."""


def _writable_folder(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


@dataclass
class Config:
    """Each field is read from the environment variable CAPTION_<FIELD NAME IN CAPITALS>."""

    bundle: Path = Path("onnx_models/demo")   # the default model's bundle folder
    extra_bundles: str = ""                   # more bundle folders to serve, comma-separated; chosen per request
    providers: str = "cpu"                    # execution providers, in order of preference: cpu, cuda, tensorrt,
                                              # openvino (first only: the encoder on OpenVINO, the decoder on cpu)
    openvino_precision: str = "bf16"          # the encoder's precision on OpenVINO: bf16 or f32
    openvino_cache_dir: str = ""              # OpenVINO keeps compiled encoders here (start-up about 10x faster
                                              # from the second start); empty: compiled at every start
    strict_providers: bool = False            # refuse to start if a requested provider is unavailable
    intra_op_threads: int = 0                 # onnxruntime threads for the encoder; 0 = one per core
    inter_op_threads: int = 1
    spinning: bool = True                     # onnxruntime's idle encoder threads spin (faster wake-up, busy cores)
    cpu_arena: bool = True                    # onnxruntime's CPU memory arena (reuses activation buffers)
    io_binding: str = "auto"                  # fixed buffers + CUDA graph replay: auto (on CUDA), on, off
    verify_checksums: bool = True             # hash the bundle's files at start-up
    use_optimized_graphs: bool = True         # load the onnxruntime-optimised copy when the bundle has one
    max_upload_mb: float = 10.0               # whole request body, checked as it is read
    max_pixels: int = 40_000_000              # one image's size, read from its header before decoding
    max_request_pixels: int = 50_000_000      # decoded pixels of all a request's images together (JPEGs count
                                              # at their draft-decoded size); a 40 MP PNG takes 0.4-1.4 s
    preprocess_threads: int = 2               # requests decoded at once, off the event loop (bounds their memory)
    max_images: int = 16                      # images per request
    micro_batching: bool = True               # caption requests that queue up together, in arrival order
    max_batch_size: int = 16                  # images in one model run, at most (a larger request runs alone)
    max_queue_delay_ms: float = 0.0           # how long a batch may wait for more requests to fill it
    max_queue_images: int = 32                # images waiting per worker; beyond, a 503 with Retry-After at once
    request_timeout_s: float = 5.0            # deadline per request (a request may ask for less with timeout_ms)
    default_beam_size: int = 1                # 1 = greedy
    max_beam_size: int = 10
    length_penalty: float = DEFAULT_LENGTH_PENALTY  # beam score = log_prob / length ** length_penalty
    warmup: bool = True                       # caption one image before reporting ready

    def __post_init__(self):
        self.bundle = Path(self.bundle)
        problems = []
        requested = self.provider_list
        unknown = [p for p in requested if p not in PROVIDER_NAMES]
        if unknown or not requested:
            problems.append(f"providers={self.providers!r} (choose from {', '.join(PROVIDER_NAMES)})")
        if "openvino" in requested and requested[0] != "openvino":
            problems.append(f"providers={self.providers!r}: openvino runs the encoder only, so it comes first "
                            "(e.g. openvino,cpu)")
        if self.openvino_precision not in OPENVINO_PRECISIONS:
            problems.append(f"openvino_precision={self.openvino_precision!r} (choose from {', '.join(OPENVINO_PRECISIONS)})")
        if self.openvino_cache_dir and not _writable_folder(self.openvino_cache_dir):
            problems.append(f"openvino_cache_dir={self.openvino_cache_dir!r} is not a folder this process can "
                            "create or write to")
        if self.io_binding not in IO_BINDING:
            problems.append(f"io_binding={self.io_binding!r} (choose from {', '.join(IO_BINDING)})")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            problems.append("thread counts must be >= 0")
        positive = ("max_upload_mb", "max_pixels", "max_request_pixels", "preprocess_threads", "max_images",
                    "max_batch_size", "max_queue_images", "request_timeout_s")
        if any(getattr(self, name) <= 0 for name in positive):
            problems.append(", ".join(positive) + " must be > 0")
        if self.max_queue_delay_ms < 0:
            problems.append("max_queue_delay_ms must be >= 0")
        if not 1 <= self.max_beam_size <= 10 or not 1 <= self.default_beam_size <= self.max_beam_size:
            problems.append("need 1 <= default_beam_size <= max_beam_size <= 10")
        if self.length_penalty < 0:
            problems.append("length_penalty must be >= 0")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))

    @property
    def bundle_paths(self) -> list[Path]:
        """Every bundle to serve; the first is the default model."""
        return [Path(self.bundle)] + [Path(p.strip()) for p in self.extra_bundles.split(",") if p.strip()]

    @property
    def provider_list(self) -> list[str]:
        return [p.strip().lower() for p in self.providers.split(",") if p.strip()]

    def engine_options(self):
        """The settings the caption engine needs, and no others."""
        from .engine import EngineOptions

        return EngineOptions(providers=tuple(self.provider_list), strict_providers=self.strict_providers,
                             intra_op_threads=self.intra_op_threads, inter_op_threads=self.inter_op_threads,
                             spinning=self.spinning, cpu_arena=self.cpu_arena, io_binding=self.io_binding,
                             use_optimized_graphs=self.use_optimized_graphs,
                             openvino_precision=self.openvino_precision,
                             openvino_cache_dir=self.openvino_cache_dir)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, environ=None) -> "Config":
        """Build from CAPTION_* variables; unknown CAPTION_* names and bad values are refused."""
        environ = os.environ if environ is None else environ
        known = {f"CAPTION_{f.name.upper()}": f for f in fields(cls)}
        unknown = sorted(k for k in environ
                         if k.startswith("CAPTION_") and k not in known and not SERVICE_LINK.match(k))
        if unknown:
            raise ConfigError(f"unknown setting {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = {}
        for key, f in known.items():
            if key in environ:
                values[f.name] = _parse(key, environ[key], type(f.default))
        return cls(**values)


def _parse(key: str, raw: str, kind: type):
    raw = raw.strip()
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if issubclass(kind, Path):
            return Path(raw)
        if kind is int:
            if not INTEGER.match(raw):  # int() also takes "1_0", "+3" and non-ASCII digits
                raise ValueError
            return int(raw)
        if kind is float:
            value = float(raw) if raw.isascii() and "_" not in raw else math.nan
            if not math.isfinite(value):
                raise ValueError
            return value
        return kind(raw)
    except ValueError:
        noun = {"int": "integer", "float": "finite number", "bool": "boolean (1/0, true/false, yes/no, on/off)"}
        raise ConfigError(f"{key}={raw!r} is not a valid {noun.get(kind.__name__, kind.__name__)}") from None

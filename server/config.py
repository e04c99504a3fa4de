"""Server configuration from environment variables, validated once at start-up.

Every CAPTION_* setting is a field of Config, with its default and meaning; the process settings
that gunicorn.conf.py reads are in server/process_settings.py. docs/operating.md's reference is
generated from both (python -m docs.generate)."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from bundle.decoding import DEFAULT_LENGTH_PENALTY

from .api_keys import read_keys

PROVIDER_NAMES = ("cpu", "cuda", "tensorrt", "openvino")
OPENVINO_PRECISIONS = ("bf16", "f32")
ENCODER_PRECISIONS = ("float32", "int8")
IO_BINDING = ("auto", "on", "off")
DEFAULT_PATH_CACHE_DIR = "~/.cache/caption-server"
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


def setting(default, meaning: str, secret: bool = False):
    """A Config field with its meaning, which the configuration reference (docs/operating.md) shows;
    a `secret` one is left out of the Config's repr (and so of any log line that shows it)."""
    return field(default=default, metadata={"meaning": meaning}, repr=not secret)


@dataclass
class Config:
    """Each field is read from the environment variable CAPTION_<FIELD NAME IN CAPITALS>."""

    bundle: Path = setting(Path("onnx_models/demo"), "model bundle folder: the default model")
    extra_bundles: str = setting("", "more bundle folders to serve, comma-separated; requests choose with `model`")
    providers: str = setting("auto", "`auto`: the server measures the paths this machine and the bundle's quality "
                             "gates allow and runs the encoder on the fastest (server/path_choice.py). Or execution "
                             "providers in order of preference: `tensorrt`, `cuda`, `cpu` (needs `onnxruntime-gpu`); "
                             "or `openvino` first: the encoder on OpenVINO (`make install-openvino`), the decoder on "
                             "`cpu`")
    path_cache_dir: str = setting(DEFAULT_PATH_CACHE_DIR, "with `CAPTION_PROVIDERS=auto`: where the measured choice "
                                  "is kept, per machine, bundle and library versions, so later starts and the other "
                                  "workers take it at once; empty: measure at every start. Set, it must be writable; "
                                  "the default is skipped with a warning where it is not (a read-only home)")
    openvino: bool = setting(True, "with `CAPTION_PROVIDERS=auto`: `0`/`off` keeps the choice off OpenVINO's paths "
                             "even where it is installed (the choice then runs among onnxruntime's)")
    openvino_precision: str = setting("bf16", "with `openvino`: the encoder's precision, `bf16` (on processors with "
                                      "AVX512_BF16 or AMX; elsewhere it falls back to onnxruntime with a warning, or "
                                      "refuses under `CAPTION_STRICT_PROVIDERS=1`) or `f32`")
    encoder_precision: str = setting("float32", "with `CAPTION_PROVIDERS` set: `int8` runs the int8 encoder the "
                                     "bundle carries (`python -m export.int8 --attach`; on OpenVINO, its other "
                                     "operators in `CAPTION_OPENVINO_PRECISION`); `auto` chooses it where it passed "
                                     "its quality gate and is fastest")
    openvino_cache_dir: str = setting("", "with `openvino`: a folder where OpenVINO keeps the compiled encoder, so "
                                      "later starts load it instead of compiling; created if missing, refused at "
                                      "start-up if it cannot be written. In Kubernetes, an `emptyDir` shared by the "
                                      "pod's workers")
    strict_providers: bool = setting(False, "`1`: refuse to start when a requested provider is missing or cannot "
                                     "start, instead of falling back to CPU with a warning")
    intra_op_threads: int = setting(0, "onnxruntime threads for the encoder (0 = one per core); the decoder graphs "
                                    "always use one")
    inter_op_threads: int = setting(1, "onnxruntime's threads between independent operators")
    spinning: bool = setting(True, "onnxruntime's idle encoder threads spin instead of sleeping: faster for a single "
                             "image, a little less throughput under load (benchmarks.layouts)")
    cpu_arena: bool = setting(True, "onnxruntime's CPU memory arena (reuses activation buffers)")
    io_binding: str = setting("auto", "fixed IO-bound buffers replayed as CUDA graphs: `auto` (on CUDA), `off`, or "
                              "`on` (on the CPU too, without graphs: for tests)")
    verify_checksums: bool = setting(True, "hash the bundle's files at start-up")
    use_optimized_graphs: bool = setting(True, "load the onnxruntime-optimised graphs when the bundle has them")
    max_upload_mb: float = setting(10.0, "request body limit, checked before the body is read (as it is read, for a "
                                   "chunked body)")
    max_pixels: int = setting(40_000_000, "one image's pixels, checked from its header before decoding")
    max_request_pixels: int = setting(50_000_000, "decoded pixels of a request's images together (JPEGs at their "
                                      "draft-decoded size), checked from the headers before decoding")
    preprocess_threads: int = setting(2, "requests decoded at once per worker, off the event loop (bounds decoding "
                                      "memory)")
    max_images: int = setting(16, "images per request")
    micro_batching: bool = setting(True, "requests that queue up while the model is busy are captioned together, "
                                   "oldest first (`0`: one request per model run, still off the event loop)")
    max_batch_size: int = setting(16, "images in one model run at most (a larger request runs alone)")
    max_queue_delay_ms: float = setting(0.0, "how long a batch that is not full may wait for more requests (under "
                                        "load the queue fills batches by itself)")
    max_queue_images: int = setting(32, "images waiting per worker; past it a request gets 503 with `Retry-After` "
                                    "at once")
    request_timeout_s: float = setting(5.0, "deadline per request; work still queued then is dropped and answered "
                                       "503 (`timeout_ms` asks for less)")
    default_beam_size: int = setting(1, "beam width when a request gives none (1 = greedy)")
    max_beam_size: int = setting(10, "the widest beam a request may ask for (at most 10)")
    length_penalty: float = setting(DEFAULT_LENGTH_PENALTY, "beam hypotheses are ranked by "
                                    "log_prob / length ** length_penalty")
    warmup: bool = setting(True, "caption one image before `/readyz` says ready")
    api_keys: str = setting("", "API keys, comma-separated: when set (or `CAPTION_API_KEYS_FILE`), captioning and "
                            "model routes (JSON API, the protocol over REST and gRPC, the form's submissions) need "
                            "`Authorization: Bearer <key>`; probes and `/metrics` stay open (docs/operating.md)",
                            secret=True)
    api_keys_file: str = setting("", "a file of API keys, one per line (`#` comments), read at start-up; with "
                                 "`CAPTION_API_KEYS` both count")

    def __post_init__(self):
        self.bundle = Path(self.bundle)
        problems = []
        requested = [] if self.auto_path else self.provider_list
        unknown = [p for p in requested if p not in PROVIDER_NAMES]
        if unknown or not (requested or self.auto_path):
            problems.append(f"providers={self.providers!r} (auto, or a list of {', '.join(PROVIDER_NAMES)})")
        if "openvino" in requested and requested[0] != "openvino":
            problems.append(f"providers={self.providers!r}: openvino runs the encoder only, so it comes first "
                            "(e.g. openvino,cpu)")
        if not self.openvino and "openvino" in requested:
            problems.append(f"providers={self.providers!r} asks for OpenVINO, which openvino=off keeps out")
        if self.openvino_precision not in OPENVINO_PRECISIONS:
            problems.append(f"openvino_precision={self.openvino_precision!r} (choose from {', '.join(OPENVINO_PRECISIONS)})")
        if self.encoder_precision not in ENCODER_PRECISIONS:
            problems.append(f"encoder_precision={self.encoder_precision!r} (choose from {', '.join(ENCODER_PRECISIONS)})")
        elif self.encoder_precision != "float32" and self.auto_path:
            problems.append(f"encoder_precision={self.encoder_precision!r} needs CAPTION_PROVIDERS set (with auto the "
                            "server chooses the encoder's precision itself)")
        if self.path_cache_dir not in ("", DEFAULT_PATH_CACHE_DIR) and \
                not _writable_folder(os.path.expanduser(self.path_cache_dir)):
            problems.append(f"path_cache_dir={self.path_cache_dir!r} is not a folder this process can create or write "
                            "to (empty: measure at every start)")
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
        self._api_keys, key_problems = read_keys(self.api_keys, self.api_keys_file)
        problems += key_problems
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))

    @property
    def api_key_set(self) -> tuple[bytes, ...]:
        """The keys a caller may present; empty when keys are off."""
        return self._api_keys

    @property
    def bundle_paths(self) -> list[Path]:
        """Every bundle to serve; the first is the default model."""
        return [Path(self.bundle)] + [Path(p.strip()) for p in self.extra_bundles.split(",") if p.strip()]

    @property
    def provider_list(self) -> list[str]:
        return [p.strip().lower() for p in self.providers.split(",") if p.strip()]

    @property
    def auto_path(self) -> bool:
        """Whether the server chooses the execution path itself (server/path_choice.py)."""
        return self.providers.strip().lower() == "auto"

    def engine_options(self, path=None):
        """The settings the caption engine needs, and no others; with `path` (a path_choice.ExecutionPath),
        that path's providers, strictly (a path that cannot start is not chosen)."""
        from .engine import EngineOptions

        if path is not None:
            return replace(self.engine_options(), providers=path.providers, strict_providers=True,
                           openvino_precision=path.openvino_precision, encoder_precision=path.encoder_precision)
        providers = ("cpu",) if self.auto_path else tuple(self.provider_list)  # auto, before the choice: onnxruntime
        return EngineOptions(providers=providers, strict_providers=self.strict_providers,
                             intra_op_threads=self.intra_op_threads, inter_op_threads=self.inter_op_threads,
                             spinning=self.spinning, cpu_arena=self.cpu_arena, io_binding=self.io_binding,
                             use_optimized_graphs=self.use_optimized_graphs,
                             openvino_precision=self.openvino_precision,
                             openvino_cache_dir=self.openvino_cache_dir, encoder_precision=self.encoder_precision)

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

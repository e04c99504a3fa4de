"""Server configuration from environment variables, validated once at start-up."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

PROVIDER_NAMES = ("cpu", "cuda", "tensorrt")
IO_BINDING = ("auto", "on", "off")


class ConfigError(ValueError):
    """A setting with a value the server cannot use."""


@dataclass
class Config:
    """Each field is read from the environment variable CAPTION_<FIELD NAME IN CAPITALS>."""

    bundle: Path = Path("onnx_models/demo")   # the default model's bundle folder
    extra_bundles: str = ""                   # more bundle folders to serve, comma-separated; chosen per request
    providers: str = "cpu"                    # execution providers, in order of preference: cpu, cuda, tensorrt
    strict_providers: bool = False            # refuse to start if a requested provider is unavailable
    intra_op_threads: int = 0                 # onnxruntime threads for the encoder; 0 = one per core
    inter_op_threads: int = 1
    spinning: bool = True                     # onnxruntime's idle encoder threads spin (faster wake-up, busy cores)
    cpu_arena: bool = True                    # onnxruntime's CPU memory arena (reuses activation buffers)
    io_binding: str = "auto"                  # fixed buffers + CUDA graph replay: auto (on CUDA), on, off
    verify_checksums: bool = True             # hash the bundle's files at start-up
    use_optimized_graphs: bool = True         # load the onnxruntime-optimised copy when the bundle has one
    max_upload_mb: float = 10.0               # whole request body, checked before it is read
    max_pixels: int = 40_000_000              # decoded image size, checked before decoding
    max_images: int = 16                      # images per request
    micro_batching: bool = True               # caption requests that queue up together, in arrival order
    default_beam_size: int = 1                # 1 = greedy
    max_beam_size: int = 10
    length_penalty: float = 1.0               # beam score = log_prob / length ** length_penalty
    warmup: bool = True                       # caption one image before reporting ready

    def __post_init__(self):
        self.bundle = Path(self.bundle)
        problems = []
        requested = self.provider_list
        unknown = [p for p in requested if p not in PROVIDER_NAMES]
        if unknown or not requested:
            problems.append(f"providers={self.providers!r} (choose from {', '.join(PROVIDER_NAMES)})")
        if self.io_binding not in IO_BINDING:
            problems.append(f"io_binding={self.io_binding!r} (choose from {', '.join(IO_BINDING)})")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            problems.append("thread counts must be >= 0")
        if self.max_upload_mb <= 0 or self.max_pixels <= 0 or self.max_images <= 0:
            problems.append("max_upload_mb, max_pixels and max_images must be > 0")
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

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def from_env(cls, environ=None) -> "Config":
        """Build from CAPTION_* variables; unknown CAPTION_* names and bad values are refused."""
        environ = os.environ if environ is None else environ
        known = {f"CAPTION_{f.name.upper()}": f for f in fields(cls)}
        unknown = sorted(k for k in environ if k.startswith("CAPTION_") and k not in known)
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
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a valid {kind.__name__}") from None

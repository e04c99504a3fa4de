"""The fastest path that keeps quality, chosen at start-up when CAPTION_PROVIDERS is not set.

The paths are the ways this server can run a bundle's encoder (the decoder graphs always run on
onnxruntime, where a step is fastest): onnxruntime in fp32, on CUDA where onnxruntime-gpu is
installed, OpenVINO in f32 or bf16, and the int8 encoder the bundle may carry on either runtime.
A path is a candidate only when this machine can run it and, for reduced precision, when the
bundle's own quality gate passed for it (bf16: export.openvino_check's figures in bundle.json;
int8: export.int8 --attach's, per runtime). Among the candidates the server measures the
encoder on one image, in alternating rounds, and keeps the fastest. Speeds depend on the
processor and the libraries, not on rules one could write down (OpenVINO f32 is faster than
onnxruntime on some processors and slower on others), so the measurement is what decides; it is
kept per machine, bundle and library versions in CAPTION_PATH_CACHE_DIR, so that later starts
and the other workers take the same choice at once.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bundle.format import OPENVINO_BF16_PARITY, Bundle
from bundle.preprocess import input_shape

from .openvino_encoder import OpenVINOUnavailable, import_openvino, openvino_capabilities

log = logging.getLogger(__name__)
WARM_UP_RUNS, ROUNDS = 2, 7
# Another path must beat onnxruntime fp32 by this much to be chosen: a tie measured at start-up is
# noise, and onnxruntime is the path every bundle is checked on.
MARGIN = 0.05


@dataclass(frozen=True)
class ExecutionPath:
    """One way to run the encoder: the engine's providers, OpenVINO precision and encoder graph."""

    name: str
    providers: tuple[str, ...]
    openvino_precision: str = "bf16"
    encoder_precision: str = "float32"  # "int8": the bundle's attached int8 encoder

    @property
    def runtime(self) -> str:
        return "openvino" if self.providers[0] == "openvino" else "onnxruntime"

    def environment(self) -> dict[str, str]:
        """The CAPTION_* settings that put a server (or a peer using this engine) on this path by hand."""
        return {"CAPTION_PROVIDERS": ",".join(self.providers), "CAPTION_OPENVINO_PRECISION": self.openvino_precision,
                "CAPTION_ENCODER_PRECISION": self.encoder_precision}


ONNXRUNTIME = ExecutionPath("onnxruntime fp32", ("cpu",))
# On OpenVINO the int8 encoder's quantised operators run in int8 (VNNI, AMX) and the rest in f32:
# bf16 for the rest was no faster (11.7 against 12.1 ms, demo encoder, 2-core Xeon with AMX).
PATHS = (ONNXRUNTIME, ExecutionPath("onnxruntime int8", ("cpu",), encoder_precision="int8"),
         ExecutionPath("cuda", ("cuda", "cpu")), ExecutionPath("openvino f32", ("openvino", "cpu"), "f32"),
         ExecutionPath("openvino bf16", ("openvino", "cpu"), "bf16"),
         ExecutionPath("openvino int8", ("openvino", "cpu"), "f32", "int8"))


@dataclass(frozen=True)
class Machine:
    """What decides which paths can run here."""

    onnxruntime_providers: tuple[str, ...]
    openvino: tuple[str, ...] | None  # OpenVINO's CPU capabilities (FP32, BF16, INT8...), None without it


def this_machine() -> Machine:
    import onnxruntime as ort

    try:
        openvino = tuple(openvino_capabilities())
    except OpenVINOUnavailable:
        openvino = None
    return Machine(tuple(ort.get_available_providers()), openvino)


def bf16_gate(bundle: Bundle) -> dict | None:
    """The bundle's OpenVINO bf16 quality figures (export.openvino_check), if it was checked."""
    return bundle.manifest.get("provenance", {}).get("parity", {}).get(OPENVINO_BF16_PARITY)


def int8_gate(bundle: Bundle, runtime: str) -> dict | None:
    """The quality figures of the bundle's int8 encoder on `runtime` (export.int8 --attach), if judged there."""
    return ((bundle.encoder_variant("int8") or {}).get("quality") or {}).get(runtime)


def candidates(bundle: Bundle, machine: Machine, openvino: bool = True) -> tuple[list[ExecutionPath], dict[str, str]]:
    """The paths this machine can run for this bundle, and why each other one was dropped
    (`openvino` False: CAPTION_OPENVINO=off keeps OpenVINO's paths out)."""
    chosen, dropped = [], {}
    for path in PATHS:
        reason = None
        if path.runtime == "openvino" and not openvino:
            reason = "CAPTION_OPENVINO=off"
        elif path.name == "cuda" and "CUDAExecutionProvider" not in machine.onnxruntime_providers:
            reason = "this onnxruntime has no CUDA provider (make install-gpu, on a machine with an NVIDIA GPU)"
        elif "openvino" in path.providers and machine.openvino is None:
            reason = "the openvino package is not installed (make install-openvino)"
        elif path.encoder_precision == "int8":
            gate = int8_gate(bundle, path.runtime)
            if bundle.encoder_variant("int8") is None:
                reason = "the bundle carries no int8 encoder (python -m export.int8 --attach)"
            elif gate is None:
                reason = f"its int8 encoder's quality gate was not run on {path.runtime}"
            elif not gate.get("passed"):
                reason = (f"its int8 encoder failed its quality gate on {path.runtime} ({gate['metric']} "
                          f"{gate['variant']} against float32's {gate['float32']})")
        elif path.openvino_precision == "bf16" and "openvino" in path.providers:
            gate = bf16_gate(bundle)
            if "BF16" not in machine.openvino:
                reason = "this processor has no bf16 arithmetic (AVX512_BF16 or AMX)"
            elif gate is None:
                reason = "its quality gate was not run on this bundle (python -m export.openvino_check)"
            elif not gate.get("passed"):
                reason = (f"it failed its quality gate on this bundle ({gate['metric']} {gate['bf16']} against "
                          f"float32's {gate['fp32']})")
        if reason:
            dropped[path.name] = reason
        else:
            chosen.append(path)
    return chosen, dropped


def fastest(runners: dict[str, callable], warm_up: int = WARM_UP_RUNS, rounds: int = ROUNDS,
            clock=time.perf_counter) -> dict[str, float]:
    """Median milliseconds of each runner, measured in alternating rounds (so that a machine whose
    speed drifts slows all of them alike)."""
    for run in runners.values():
        for _ in range(warm_up):
            run()
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            started = clock()
            run()
            times[name].append((clock() - started) * 1e3)
    return {name: round(statistics.median(t), 2) for name, t in times.items()}


def cache_key(bundle: Bundle, machine: Machine, threads: int, paths: list[ExecutionPath]) -> str:
    """What the measurement depends on: the encoder, the processor, the libraries, the threads, the candidates."""
    import onnxruntime as ort

    encoder = bundle.manifest["checksums"].get(bundle.graph_file("encoder", optimized=False).name, "")
    try:
        cpu = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    try:
        openvino_version = import_openvino().__version__
    except ImportError:
        openvino_version = None
    gate = bf16_gate(bundle) or {}
    int8 = bundle.encoder_variant("int8") or {}
    int8_file = bundle.manifest["checksums"].get(int8.get("file") or "", "")
    facts = [encoder, cpu, os.cpu_count(), threads, ort.__version__, openvino_version, machine.onnxruntime_providers,
             machine.openvino, bool(gate.get("passed")), int8_file,
             sorted(runtime for runtime, figures in int8.get("quality", {}).items() if figures.get("passed")),
             [path.name for path in paths]]
    return hashlib.sha256(json.dumps(facts, default=str).encode()).hexdigest()[:16]


@dataclass
class Choice:
    """The path an engine runs on, and why."""

    path: ExecutionPath
    timings_ms: dict[str, float]
    dropped: dict[str, str]
    source: str  # "measured at start-up", "measured earlier on this machine", or "set by CAPTION_PROVIDERS"

    @property
    def reason(self) -> str:
        if not self.timings_ms:
            return self.source
        others = ", ".join(f"{n} {ms:g} ms" for n, ms in self.timings_ms.items() if n != self.path.name)
        return (f"{self.timings_ms[self.path.name]:g} ms per image in the encoder" +
                (f" against {others}" if others else ", the only candidate") + f" ({self.source})")

    def summary(self) -> dict:
        """What /api/v1/model and the protocol's metadata show."""
        return {"path": self.path.name, "reason": self.reason, "encoder_ms": self.timings_ms, "dropped": self.dropped}


def choose(bundle: Bundle, make_engine, threads: int, cache_dir: str, machine: Machine | None = None,
           openvino: bool = True):
    """(engine, Choice): the bundle's engine on the fastest candidate path. `make_engine(path)` builds
    an engine on a path (raising if it cannot start there). The measurement is read from, or
    written to, `cache_dir` (empty: measured every start), under a lock, so that workers starting
    together measure once."""
    machine = machine or this_machine()
    paths, dropped = candidates(bundle, machine, openvino)
    folder = Path(cache_dir).expanduser() if cache_dir else None
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            open(folder / ".lock", "a").close()
        except OSError as exc:
            log.warning("bundle %s: cannot keep the path measurement in %s (%s); measuring at every start",
                        bundle.name, folder, exc.strerror or exc)
            folder = None
    if folder is None:
        return _measure(bundle, make_engine, paths, dropped)
    file = folder / f"path-{bundle.name}-{cache_key(bundle, machine, threads, paths)}.json"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second worker waits for the first's measurement
        known = _kept(file)
        if known is not None:
            path = next((p for p in paths if p.name == known["path"]), None)
            if path is not None:
                try:
                    engine = make_engine(path)
                except Exception as exc:  # the machine changed under the cache: measure again
                    log.warning("bundle %s: %s, chosen earlier, cannot start (%s); measuring again",
                                bundle.name, path.name, exc)
                else:
                    return engine, Choice(path, known["encoder_ms"], dropped, "measured earlier on this machine")
        engine, choice = _measure(bundle, make_engine, paths, dropped)
        file.write_text(json.dumps({"path": choice.path.name, "encoder_ms": choice.timings_ms}))
        return engine, choice


def _kept(file: Path) -> dict | None:
    """An earlier measurement, or None where there is none (or it cannot be read: measured again)."""
    try:
        known = json.loads(file.read_text())
        return known if isinstance(known.get("path"), str) and isinstance(known.get("encoder_ms"), dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def _measure(bundle: Bundle, make_engine, paths: list[ExecutionPath], dropped: dict[str, str]):
    engines = {}
    for path in paths:
        try:
            engines[path.name] = (path, make_engine(path))
        except Exception as exc:  # a provider that is installed but cannot start (no cuDNN, say)
            dropped[path.name] = f"it could not start ({str(exc).splitlines()[0]})"
    if not engines:  # onnxruntime fp32 always starts unless the bundle cannot load: let that error show
        return make_engine(ONNXRUNTIME), Choice(ONNXRUNTIME, {}, dropped, "no other path could start")
    image = np.random.default_rng(0).random((1, *input_shape(bundle.preprocessing)), dtype=np.float32)
    timings = fastest({name: (lambda e=engine: e.encode(image)) for name, (_, engine) in engines.items()})
    best = min(timings, key=lambda name: timings[name] * (1 if name == ONNXRUNTIME.name else 1 + MARGIN))
    return engines[best][1], Choice(engines[best][0], timings, dropped, "measured at start-up")


def engine_for(bundle: Bundle, config):
    """The bundle's engine: on the path CAPTION_PROVIDERS names, or on the fastest one this machine
    and the bundle's quality gates allow, logged with why."""
    from .engine import CaptionEngine

    if not config.auto_path:
        engine = CaptionEngine(bundle, config.engine_options())
        int8 = " (int8 encoder)" if config.encoder_precision == "int8" else ""
        path = ExecutionPath(", ".join(engine.active_providers) + int8, tuple(config.provider_list),
                             config.openvino_precision, config.encoder_precision)
        engine.choice = Choice(path, {}, {}, "set by CAPTION_PROVIDERS")
        return engine
    engine, choice = choose(bundle, lambda path: CaptionEngine(bundle, config.engine_options(path)),
                            config.intra_op_threads, config.path_cache_dir, openvino=config.openvino)
    engine.choice = choice
    log.info("bundle %s: encoder on %s: %s%s", bundle.name, choice.path.name, choice.reason,
             "".join(f"; not {name}: {why}" for name, why in choice.dropped.items()))
    return engine

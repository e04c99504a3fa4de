"""This server against the servers a team might pick instead, on the same machine in one run:
the same bundle and 640x480 JPEGs behind this server as `make serve` starts it (on the path it
chooses: server/path_choice.py), NVIDIA Triton through PyTriton, and LitServe. Each peer runs
twice: at its defaults (`triton-defaults`, `litserve-defaults`: as its docs start it, the model on
onnxruntime's CPU provider in fp32, the framework's batching settings untouched), and on this
server's engine settings (`triton`, `litserve`: the path this server chose, batches of up to 16
gathered without delay, as this server batches). One load generator (harness.load) drives them all. Each server runs alone on the machine in turn, in
rounds that alternate their order (single-image latency, then throughput at several
concurrencies), its turn bracketed by in-process probes of the machine's speed. For
every pair, each round's ratio (this server's figure over the peer's), raw and drift-corrected,
and the medians of the rounds.

Every server on the same engine must caption the images identically before anything is timed
(the peers at their defaults run fp32, whose captions may differ from a reduced-precision path's).

Usage: python -m benchmarks.peers [--bundle onnx_models/demo] [--rounds 5] [--seconds 8]
       [--concurrency 1 8 32] [--servers this triton litserve triton-defaults litserve-defaults]
Writes benchmarks/results/peers.json, peers.md and peers.png (make bench-peers).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image, ImageDraw

from bundle.format import load_bundle
from harness.load import run_load
from harness.server_process import ROOT, GunicornServer, free_port, rss_kb
from server.captioning import preprocess_uploads
from server.config import Config
from server.path_choice import engine_for

from .floor import machine

RESULTS = Path(__file__).parent / "results"
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
CONCURRENCY = (1, 8, 32)
BASELINE = "this"


def scene_photos(count: int = 4, seed: int = 0) -> list[bytes]:
    """640x480 JPEGs of two shapes on a noisy background, the size of a typical upload."""
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(count):
        background = rng.integers(40, 220, 3)
        pixels = np.clip(background + rng.normal(0, 12, (480, 640, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for left in (60, 360):
            top, size = int(rng.integers(60, 260)), int(rng.integers(100, 180))
            box, colour = (left, top, left + size, top + size), tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += rss_kb(current)
        except (OSError, RuntimeError):
            continue
        children = subprocess.run(["pgrep", "-P", str(current)], capture_output=True, text=True).stdout
        todo.extend(int(p) for p in children.split())
    return round(total / 1024, 1)


# As a peer's docs start it: the ONNX model on onnxruntime's CPU provider, fp32.
AT_DEFAULTS = {"CAPTION_PROVIDERS": "cpu"}


class Peer:
    """One server under test: how to start it, ask it for a caption and read the answer."""

    name = ""
    caption_path = ""  # where a caption request is POSTed
    defaults = False   # the framework at its own defaults (AT_DEFAULTS), rather than on this server's engine
    process: subprocess.Popen | None = None
    log = None

    def __init__(self, bundle: Path, engine_env: dict):
        self.bundle, self.port = bundle, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = AT_DEFAULTS if self.defaults else engine_env

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.log = open(Path(tempfile.gettempdir()) / f"peer-{self.name}-{self.port}.log", "w")
        # A session of its own, so that stop() ends the server's whole process tree.
        self.process = subprocess.Popen(self.command() + (["--defaults"] if self.defaults else []), cwd=ROOT,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, "CAPTION_BUNDLE": str(self.bundle), **self.env})

    def ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.output()[-2000:]}")
            try:
                if self.ready():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready in {timeout:.0f} s: {self.output()[-2000:]}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    @property
    def endpoint(self) -> str:
        return self.url + self.caption_path

    def request(self, image: bytes) -> dict:
        """Keyword arguments for requests.Request("POST", self.endpoint, ...) captioning `image`:
        by default a multipart upload in the field "image"."""
        return {"files": {"image": ("photo.jpg", image, "image/jpeg")}}

    def caption_of(self, answer: dict) -> str:
        raise NotImplementedError

    def caption(self, image: bytes) -> str:
        prepared = requests.Request("POST", self.endpoint, **self.request(image)).prepare()
        with requests.Session() as session:
            response = session.send(prepared, timeout=30)
        response.raise_for_status()
        return self.caption_of(response.json())

    def memory_mb(self) -> float:
        return tree_rss_mb(self.process.pid)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.log:
            self.log.close()


class ThisServer(Peer):
    """gunicorn -c gunicorn.conf.py, as `make serve` starts it: nothing set."""

    name, caption_path = "this", "/api/v1/captions"

    def start(self) -> None:
        self.server = GunicornServer({"CAPTION_BUNDLE": str(self.bundle), "CAPTION_PROVIDERS": "auto"})
        self.process, self.port, self.url = self.server.process, self.server.port, self.server.url

    def ready(self) -> bool:
        return requests.get(self.url + "/readyz", timeout=2).status_code == 200

    def caption_of(self, answer: dict) -> str:
        return answer["captions"][0]["caption"]

    def output(self) -> str:
        return self.server.output()

    def stop(self) -> None:
        self.server.stop()


class LitServePeer(Peer):
    """LitServe with its request batching (benchmarks/peer_servers/litserve_server.py)."""

    name, caption_path = "litserve", "/predict"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "benchmarks.peer_servers.litserve_server", str(self.port)]

    def ready(self) -> bool:
        return requests.get(self.url + "/health", timeout=2).text == "ok"

    def caption_of(self, answer: dict) -> str:
        return answer["caption"]


def infer_request(image: bytes) -> tuple[bytes, dict]:
    """An Open Inference Protocol request of one image as a BYTES element, in the binary data
    extension (as tritonclient sends it): a JSON header, then the 4-byte length and the bytes."""
    payload = struct.pack("<I", len(image)) + image
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(payload)}}],
                         "outputs": [{"name": "caption", "parameters": {"binary_data": False}}]}).encode()
    return header + payload, {"Inference-Header-Content-Length": str(len(header)),
                              "Content-Type": "application/octet-stream"}


class TritonPeer(Peer):
    """Triton Inference Server through PyTriton (benchmarks/peer_servers/triton_server.py), in its
    own virtual environment (make peers-install)."""

    name, caption_path = "triton", "/v2/models/caption/infer"

    def command(self) -> list[str]:
        if not TRITON_PYTHON.exists():
            raise RuntimeError(f"{TRITON_PYTHON} is missing: run 'make peers-install'")
        self.grpc_port, self.metrics_port = free_port(), free_port()
        return [str(TRITON_PYTHON), "-m", "benchmarks.peer_servers.triton_server", str(self.port),
                str(self.grpc_port), str(self.metrics_port)]

    def ready(self) -> bool:
        return requests.get(self.url + "/v2/models/caption/ready", timeout=2).status_code == 200

    def request(self, image: bytes) -> dict:
        body, headers = infer_request(image)
        return {"data": body, "headers": headers}

    def caption_of(self, answer: dict) -> str:
        return answer["outputs"][0]["data"][0]


class TritonAtDefaults(TritonPeer):
    name, defaults = "triton-defaults", True


class LitServeAtDefaults(LitServePeer):
    name, defaults = "litserve-defaults", True


PEERS = {peer.name: peer for peer in (ThisServer, TritonPeer, LitServePeer, TritonAtDefaults, LitServeAtDefaults)}


def round_order(names: list[str], round_index: int) -> list[str]:
    """The servers' order in a round: as given in even rounds, reversed in odd ones, so that no
    server always runs first (on a cool machine) or last."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


class EncoderProbe:
    """The bundle's encoder at batch 1 in this process, on the path this server chooses, timed
    before a server starts and after it stops: these machines' speed drifts by 10-20 % within
    minutes, more than the servers differ, so each server's figures are also given relative to the
    probes around them. (Probed while no server runs: an idle LitServe polls its queue, and a
    probe beside it would charge that to the machine.)"""

    def __init__(self, bundle: Path, photo: bytes, runs: int = 15):
        config = Config(bundle=bundle, providers="auto")
        self.engine = engine_for(load_bundle(bundle), config)
        self.path = self.engine.choice.path
        self.inputs, self.runs = preprocess_uploads([photo], config, self.engine)[0], runs

    def __call__(self) -> float:
        self.engine.encode(self.inputs)
        samples = []
        for _ in range(self.runs):
            started = time.perf_counter()
            self.engine.encode(self.inputs)
            samples.append((time.perf_counter() - started) * 1e3)
        return round(float(np.median(samples)), 2)


def measure(peer: Peer, photos: list[bytes], concurrency: tuple, seconds: float) -> dict:
    """Throughput, latency and errors at each concurrency (c=1 gives the single-image latency)."""
    load = [(peer.request(photo), 200) for photo in photos]
    run_load(peer.endpoint, load, max(concurrency), 1.0)  # warm: every batch size the round will see
    figures = {}
    for clients in concurrency:
        result = run_load(peer.endpoint, load, clients, seconds)
        summary = result.summary()
        figures[str(clients)] = {"throughput_rps": summary["throughput_rps"], "p50_ms": summary["p50_ms"],
                                 "p99_ms": summary["p99_ms"], "requests": summary["requests"],
                                 "errors": sum(1 for s in result.statuses if s != 200)}
    figures["memory_mb"] = peer.memory_mb()
    return figures


def ratios(rounds: list[dict], baseline: str, peer: str, concurrency: tuple) -> dict:
    """Per round and as the median of the rounds: the baseline's single-image p50 and p99 over
    the peer's (below 1: the baseline answers sooner), and its throughput over the peer's at
    each concurrency (above 1: the baseline serves more). `corrected`: each server's figures first
    taken relative to its probes (latency / probe, throughput x probe), so that the machine's
    drift between the two servers' turns cancels."""
    def per_round(figure, key: str, latency: bool) -> dict:
        raw, corrected = [], []
        for r in rounds:
            mine, theirs = r[baseline][key], r[peer][key]
            raw.append(round(figure(mine) / figure(theirs), 3))
            drift = r[peer]["probe_ms"] / r[baseline]["probe_ms"]
            corrected.append(round(raw[-1] * (drift if latency else 1 / drift), 3))
        return {"rounds": raw, "median": round(float(np.median(raw)), 3),
                "corrected_rounds": corrected, "corrected_median": round(float(np.median(corrected)), 3)}

    table = {"p50": per_round(lambda f: f["p50_ms"], "1", True), "p99": per_round(lambda f: f["p99_ms"], "1", True)}
    for clients in concurrency:
        table[f"throughput_c{clients}"] = per_round(lambda f: f["throughput_rps"], str(clients), False)
    return table


def check_same_captions(captions: dict[str, list[str]]) -> None:
    """Refuse to compare servers on one engine that caption the same photos differently: they do not
    serve the same model. (The peers at their defaults are checked among themselves.)"""
    for group in (False, True):
        named = {name: c for name, c in captions.items() if PEERS[name].defaults == group}
        if not named:
            continue
        first_name, first = next(iter(named.items()))
        for name, theirs in named.items():
            if theirs != first:
                raise RuntimeError(f"{name} captions differently from {first_name} ({theirs} against {first})")


def pairs(names: list[str]) -> list[tuple[str, str]]:
    """(this server's variant, peer) for every peer that is not this server."""
    ours = [name for name in names if name.startswith(BASELINE)]
    return [(mine, other) for mine in ours for other in names if other not in ours]


def run(bundle: Path, names: list[str], rounds: int, seconds: float, concurrency: tuple, photos: list[bytes]) -> dict:
    """Every server in turn, alone on the machine (started, checked, measured, stopped: an idle
    LitServe polls its queue every millisecond and would slow the others), in alternating rounds.
    A server that captions differently from the first one stops the run."""
    captions, by_round = {}, []
    probe = EncoderProbe(bundle, photos[0])
    for index in range(rounds):
        figures = {}
        for name in round_order(names, index):
            before, peer = probe(), PEERS[name](bundle, probe.path.environment())
            try:
                peer.start()
                peer.wait_ready()
                if name not in captions:
                    captions[name] = [peer.caption(photo) for photo in photos]
                    check_same_captions(captions)
                figures[name] = measure(peer, photos, concurrency, seconds)
            finally:
                peer.stop()
            figures[name]["probe_ms"] = round((before + probe()) / 2, 2)
        by_round.append(figures)
    return {"servers": names, "rounds": by_round, "captions": captions, "concurrency": list(concurrency),
            "seconds": seconds, "default_path": probe.path.name, "default_path_reason": probe.engine.choice.reason,
            "ratios": {f"{mine}/{other}": ratios(by_round, mine, other, concurrency) for mine, other in pairs(names)}}


def medians(results: dict, name: str) -> dict:
    """A server's figures as the median of the rounds."""
    rounds = [r[name] for r in results["rounds"]]
    return {key: ({k: float(np.median([r[key][k] for r in rounds])) for k in value} if isinstance(value, dict)
                  else float(np.median([r[key] for r in rounds])))
            for key, value in rounds[0].items()}


def probes(results: dict, name: str) -> str:
    """The encoder probes around a server's turns: median (lowest-highest)."""
    values = [r[name]["probe_ms"] for r in results["rounds"]]
    return f"{np.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def markdown(results: dict) -> str:
    concurrency = results["concurrency"]
    at_defaults = [n for n in results["servers"] if PEERS[n].defaults]
    path = results.get("default_path", "onnxruntime fp32")
    lines = [f"Machine: {results['machine']}. Greedy captions of 640x480 JPEGs (two shapes) over loopback, one "
             f"image per request, the same bundle in every server. This server as `make serve` starts it, on the "
             f"path it chose: {path} ({results.get('default_path_reason', '')}). "
             + (f"{', '.join(at_defaults)}: the peer as its docs start it (onnxruntime fp32, its own batching "
                "defaults); the others on this server's engine settings. " if at_defaults else "")
             + f"{len(results['rounds'])} rounds alternating the servers' order, {results['seconds']:g} s per "
             "concurrency; medians of the rounds. Every server on the same engine gave the same captions.", "",
             "| server | single image p50 / p99 (ms) | "
             + " | ".join(f"captions/s at {c}" for c in concurrency) + " | errors | memory (MB) | encoder probe (ms) |",
             "| --- | --- | " + " | ".join("---" for _ in concurrency) + " | --- | --- | --- |"]
    for name in results["servers"]:
        m = medians(results, name)
        errors = sum(r[name][str(c)]["errors"] for r in results["rounds"] for c in concurrency)
        lines.append(f"| {name} | {m['1']['p50_ms']:.1f} / {m['1']['p99_ms']:.1f} | "
                     + " | ".join(f"{m[str(c)]['throughput_rps']:.1f}" for c in concurrency)
                     + f" | {errors} | {m['memory_mb']:.0f} | {probes(results, name)} |")
    lines += ["", "Ratios, this server over the peer, medians of the rounds: raw, and in brackets with each "
                  "server's figures relative to the encoder probed in-process around its turn (the machine's "
                  "drift cancels). p50 below 1 and throughput above 1 mean this server is ahead.", "",
              "| pair | p50 | p99 | " + " | ".join(f"throughput at {c}" for c in concurrency) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in concurrency) + " |"]
    for pair, table in results["ratios"].items():
        cells = [f"{v['median']:.2f} ({v['corrected_median']:.2f})" for v in table.values()]
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def headline(results: dict) -> str:
    """One line per peer for the README: this server as `make serve` starts it against the peer at
    its defaults, with the peer on this server's engine settings beside it."""
    def ratios_against(other: str) -> str:
        table = results["ratios"][f"{BASELINE}/{other}"]

        def ratio(name: str) -> str:
            return f"{table[name]['median']:.2f}x ({table[name]['corrected_median']:.2f}x)"

        throughput = ", ".join(f"{ratio(f'throughput_c{c}')} at {c}" for c in results["concurrency"] if c > 1)
        return f"single-image p50 {ratio('p50')} its p50; throughput {throughput} clients"

    lines = []
    for other in results["servers"]:
        if other == BASELINE or PEERS[other].defaults:
            continue
        at_defaults = f"{other}-defaults"
        if at_defaults in results["servers"]:
            lines.append(f"- against {other} at its defaults: {ratios_against(at_defaults)}; "
                         f"on this server's engine settings: {ratios_against(other)}")
        else:
            lines.append(f"- against {other} on this server's engine settings: {ratios_against(other)}")
    path = results.get("default_path", "onnxruntime fp32")
    return (f"This server as `make serve` starts it (on {path}, the path it chose) against the same model behind "
            f"other servers, medians of {len(results['rounds'])} alternating rounds (drift-corrected in brackets) "
            f"on {results['machine'].split(', Python')[0]} (`make bench-peers`):\n\n" + "\n".join(lines) + "\n")


def plot(results: dict, path: Path) -> None:
    """Throughput against concurrency, one line per server (medians of the rounds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    concurrency = results["concurrency"]
    for name in results["servers"]:
        m = medians(results, name)
        left.plot(concurrency, [m[str(c)]["throughput_rps"] for c in concurrency], marker="o", label=name)
        right.bar(name, m["1"]["p50_ms"])
    left.set(xlabel="concurrent clients", ylabel="captions per second", xscale="log", title="Throughput")
    left.set_xticks(concurrency, [str(c) for c in concurrency])
    left.legend()
    right.set(ylabel="ms", title="Single image, p50")
    figure.suptitle(results["machine"], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_results(results: dict, folder: Path = RESULTS) -> None:
    (folder / "peers.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / "peers.md").write_text(markdown(results))
    plot(results, folder / "peers.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("onnx_models/demo"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--servers", nargs="+", choices=list(PEERS),
                        help="default: this, then each peer on this server's engine and at its defaults")
    args = parser.parse_args(argv)
    if not (args.bundle / "bundle.json").is_file():
        print(f"error: no bundle at {args.bundle} (run 'make demo')", file=sys.stderr)
        return 2
    names = args.servers or ["this", "triton", "litserve", "triton-defaults", "litserve-defaults"]
    if names[0] != BASELINE:
        print(f"error: --servers must start with {BASELINE!r}, the server the others are compared with", file=sys.stderr)
        return 2
    if "triton" in names and not TRITON_PYTHON.exists():
        print(f"error: {TRITON_PYTHON} is missing: run 'make peers-install'", file=sys.stderr)
        return 2
    results = {"machine": machine(), **run(args.bundle, names, args.rounds, args.seconds, tuple(args.concurrency),
                                           scene_photos())}
    write_results(results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

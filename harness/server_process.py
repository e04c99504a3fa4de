"""Start and stop the real gunicorn server (gunicorn.conf.py) on a free loopback port."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GunicornServer:
    """gunicorn -c gunicorn.conf.py on a free loopback port, with extra environment; its
    output goes to a log file that `output()` reads."""

    def __init__(self, env: dict, root: Path = ROOT):
        """`root`: the checkout whose gunicorn.conf.py and server/ run (another commit's worktree, say)."""
        self.port = free_port()
        # Its own gRPC port too: workers share theirs with SO_REUSEPORT, and two servers must not.
        self.grpc_port = int(env["GRPC_PORT"]) if str(env.get("GRPC_PORT", "")).isdigit() else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.gettempdir()) / f"gunicorn-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "-c", "gunicorn.conf.py"], cwd=root,
            env={**os.environ, "PORT": str(self.port), "GRPC_PORT": str(self.grpc_port), "HOST": "127.0.0.1", **env},
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60, in_a_row: int = 10) -> None:
        """Until /readyz has said ready `in_a_row` times running: each answer comes from whichever
        worker accepts, and one ready worker says nothing of the others."""
        deadline, ready = time.time() + timeout, 0
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.output()}")
            try:
                ready = ready + 1 if requests.get(self.url + "/readyz", timeout=2).status_code == 200 else 0
                if ready >= in_a_row:
                    return
            except (requests.ConnectionError, requests.Timeout):
                ready = 0
            time.sleep(0.2 if ready == 0 else 0.01)
        raise RuntimeError(f"gunicorn not ready in {timeout}s:\n{self.output()}")

    def workers(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return sorted(int(p) for p in out.split())

    def output(self) -> str:
        return self.log_path.read_text()

    def startup_error(self) -> str | None:
        """The first one-line refusal to start ("error: ..."), plain or inside a JSON log line."""
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    line = json.loads(line).get("message", "")
                except ValueError:
                    continue
            if line.startswith("error: "):
                return line
        return None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class MakeServe(GunicornServer):
    """`make serve` as a user runs it (make's shell, then gunicorn), on a given bundle, with the
    master's pid in `<folder>/caption-server.pid`: for the docs' signal commands, run in `folder`."""

    def __init__(self, bundle: Path, folder: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pidfile = folder / "caption-server.pid"
        self.log_path = folder / "make-serve.log"
        self.log = open(self.log_path, "w")
        venv = Path(sys.executable).parents[1]
        # -o: take the installation and the bundle as they are (make would rebuild a bundle older
        # than the demo's config, or reinstall after a requirements edit).
        self.process = subprocess.Popen(
            ["make", "--no-print-directory", "-o", f"{venv}/.installed-serve", "-o", f"{bundle}/bundle.json", "serve",
             f"VENV={venv}", f"DEMO_BUNDLE={bundle}/bundle.json", f"PORT={self.port}", f"PIDFILE={self.pidfile}"],
            cwd=ROOT, env={**os.environ, "CAPTION_BUNDLE": str(bundle), "GRPC_PORT": str(free_port()), **(env or {})},
            stdout=self.log, stderr=subprocess.STDOUT)

    def master(self) -> int:
        return int(self.pidfile.read_text())

    def workers(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.master())], capture_output=True, text=True).stdout
        return sorted(int(p) for p in out.split())

    def stop(self) -> None:
        if self.process.poll() is None and self.pidfile.exists():
            os.kill(self.master(), signal.SIGTERM)
        super().stop()


def rss_kb(pid: int) -> int:
    """Resident memory of a process, in kB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")

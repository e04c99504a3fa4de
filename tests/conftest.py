"""Shared fixtures: a small synthetic dataset, a small trained run and its ONNX bundle, built
once per test session through the real command-line tools, and a live gunicorn server."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def run_cli(*args: str, check: bool = True, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m <args>` from the repository root; output captured."""
    result = subprocess.run([PYTHON, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **QUIET_TF, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"python -m {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "shapes"
    run_cli("training.synthetic", "--out", str(out), "--images", "160", "--seed", "3")
    return out


@pytest.fixture(scope="session")
def trained_run(shapes_dataset, tmp_path_factory) -> Path:
    """A small decoder trained for a few epochs: enough for non-trivial captions."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    run_cli("training.train", "--dataset", "shapes", "--data", str(shapes_dataset), "--out", str(out),
            "--cache-dir", str(out.parent / "cache"), "--units", "64", "--embedding-dim", "32",
            "--epochs", "6", "--batch-size", "32", "--dropout", "0.1", "--quiet")
    return out


@pytest.fixture(scope="session")
def bundle_dir(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx_models") / "tiny"
    run_cli("export", "--run", str(trained_run), "--out", str(out))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GunicornServer:
    """gunicorn -c gunicorn.conf.py on a free loopback port, with extra environment."""

    def __init__(self, env: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gunicorn-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [str(Path(PYTHON).with_name("gunicorn")), "-c", "gunicorn.conf.py"], cwd=ROOT,
            env={**os.environ, "PORT": str(self.port), "HOST": "127.0.0.1", **env},
            stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.process.returncode}:\n{self.output()}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"gunicorn not ready in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server(bundle_dir):
    """A live server on the test bundle (2 workers, so requests cross processes)."""
    srv = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "2"})
    srv.wait_ready()
    yield srv
    srv.stop()

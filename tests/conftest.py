"""Shared fixtures: a small synthetic dataset, a small trained run and its ONNX bundle, built
once per test session through the real command-line tools, and a live gunicorn server.

The suite runs on two pytest-xdist workers (pytest.ini). What the session trains is built once
for both (`built_once`), and starts in the background as the session starts, while the fast
tests (ordered first) run beside it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from filelock import FileLock

from harness.server_process import ROOT, GunicornServer

PYTHON = sys.executable
# The fast tier (`make test-fast`) is every test not marked slow. A test is slow when it needs a
# model this session trains or a live server (these fixtures, directly or through another), or
# when its module says so (`pytestmark = pytest.mark.slow`: it trains, converts or serves by itself).
SLOW_FIXTURES = {"shapes_dataset", "trained_run", "bundle_dir", "attention_run", "attention_bundle_dir",
                 "fp16_bundle_dir", "int8_bundle_dir", "int8_attached_bundle_dir", "server", "attention_server", "notebooks", "imported"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    # The fast tests first: they run while the session's models train in the background.
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
# The servers the tests start run the encoder on onnxruntime fp32, the path their captions are
# compared with; the path a server chooses by itself is tested on servers of its own
# (server/test_path_choice.py, with CAPTION_PROVIDERS=auto).
os.environ.setdefault("CAPTION_PROVIDERS", "cpu")
_running: set[subprocess.Popen] = set()  # killed if the session stops early


def run_cli(*args: str, check: bool = True, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m <args>` from the repository root; output captured."""
    with subprocess.Popen([PYTHON, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **QUIET_TF, **(env or {})}) as process:
        _running.add(process)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        finally:
            _running.discard(process)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"python -m {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def pytest_sessionfinish(session, exitstatus):
    for process in list(_running):  # a session stopped early leaves no training behind
        process.kill()


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(out)`, run once per test session by whichever worker (or background build) asks
    first; the others wait for it and share `out`. A build that failed is tried again by the next."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built-once"
    shared.mkdir(exist_ok=True)
    out, done = shared / name, shared / f"{name}.done"
    with FileLock(shared / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            build(out)
            done.touch()
    return out


def feature_cache(run: Path) -> Path:
    """Where the session's training of `run` cached its image features (tests training beside it reuse them)."""
    return run.with_name(run.name + "-cache")


def train_tiny_run(dataset: Path, out: Path) -> None:
    """A small decoder trained for a few epochs: enough for non-trivial captions."""
    run_cli("training.train", "--dataset", "shapes", "--data", str(dataset), "--out", str(out),
            "--cache-dir", str(feature_cache(out)), "--units", "64", "--embedding-dim", "32",
            "--epochs", "6", "--batch-size", "32", "--dropout", "0.1",
            "--feature-norm", "l2-standardise", "--quiet")  # as the demo: its export parity is tested here


def train_tiny_attention_run(dataset: Path, out: Path) -> None:
    """A small attention decoder over a learned encoder part (as the demo), trained briefly."""
    run_cli("training.train", "--dataset", "shapes", "--data", str(dataset), "--out", str(out),
            "--cache-dir", str(feature_cache(out)), "--attention", "--units", "48",
            "--embedding-dim", "24", "--learned-encoder", "--feature-norm", "none", "--adapter-channels", "16",
            "--cell-loss-weight", "1", "--epochs", "4", "--batch-size", "16", "--dropout", "0.1", "--quiet")


class SessionBuilds:
    """What the session trains and exports, each built once (`built_once`); `start` builds them in
    background threads (the two trainings side by side: each leaves a core idle much of the time)."""

    def __init__(self, tmp_path_factory):
        self.factory = tmp_path_factory

    def shapes_dataset(self) -> Path:
        return built_once(self.factory, "shapes", lambda out: run_cli(
            "training.synthetic", "--out", str(out), "--images", "160", "--seed", "3"))

    def trained_run(self) -> Path:
        dataset = self.shapes_dataset()
        return built_once(self.factory, "tiny-run", lambda out: train_tiny_run(dataset, out))

    def attention_run(self) -> Path:
        dataset = self.shapes_dataset()
        return built_once(self.factory, "tiny-attention-run", lambda out: train_tiny_attention_run(dataset, out))

    def bundle_dir(self) -> Path:
        run = self.trained_run()
        return built_once(self.factory, "tiny-bundle", lambda out: run_cli("export", "--run", str(run), "--out", str(out)))

    def attention_bundle_dir(self) -> Path:
        run = self.attention_run()
        return built_once(self.factory, "tiny-attention-bundle", lambda out: run_cli(
            "export", "--run", str(run), "--out", str(out), "--no-repeat-ngram-size", "4"))

    def start(self, *names: str) -> None:
        """Build these in the background; their fixtures wait on built_once's lock, not on the threads."""
        for name in names:
            threading.Thread(target=self._quietly, args=(getattr(self, name),), daemon=True).start()

    @staticmethod
    def _quietly(build) -> None:
        try:
            build()
        except Exception:  # the fixture that needs it builds it again and reports the failure
            pass


@pytest.fixture(scope="session", autouse=True)
def session_builds(request, tmp_path_factory) -> SessionBuilds:
    """Starts, as the session starts, the builds its tests will need."""
    builds = SessionBuilds(tmp_path_factory)
    needed = {name for item in request.session.items for name in item.fixturenames}
    builds.start(*[bundle if bundle in needed else run for bundle, run in
                   (("bundle_dir", "trained_run"), ("attention_bundle_dir", "attention_run"))
                   if bundle in needed or run in needed])
    return builds


@pytest.fixture(scope="session")
def shapes_dataset(session_builds) -> Path:
    return session_builds.shapes_dataset()


@pytest.fixture(scope="session")
def trained_run(session_builds) -> Path:
    """A small decoder trained for a few epochs: enough for non-trivial captions."""
    return session_builds.trained_run()


@pytest.fixture(scope="session")
def bundle_dir(session_builds) -> Path:
    return session_builds.bundle_dir()


@pytest.fixture(scope="session")
def attention_run(session_builds) -> Path:
    """A small attention decoder over a learned encoder part (as the demo), trained briefly."""
    return session_builds.attention_run()


@pytest.fixture(scope="session")
def attention_bundle_dir(session_builds) -> Path:
    return session_builds.attention_bundle_dir()


@pytest.fixture(scope="session")
def fp16_bundle_dir(bundle_dir, trained_run, tmp_path_factory) -> Path:
    # Quality gate off: the tests check the variant's form, that its figures are recorded and
    # that the gate refuses (test_fp16.py). How often a 6-epoch model's greedy captions survive
    # float16 depends on the processor (14/16 on one machine of this kind, 16/16 on another).
    return built_once(tmp_path_factory, "tiny-fp16-bundle", lambda out: run_cli(
        "export.fp16", "--bundle", str(bundle_dir), "--run", str(trained_run), "--out", str(out), "--images", "32",
        "--max-quality-loss", "1"))


@pytest.fixture(scope="session")
def int8_bundle_dir(bundle_dir, trained_run, tmp_path_factory) -> Path:
    # Quality gate off: the tests check the variant's form and that the figures are recorded,
    # and a random encoder quantises poorly (the demo's agreement is in docs/demo-model.md).
    return built_once(tmp_path_factory, "tiny-int8-bundle", lambda out: run_cli(
        "export.int8", "--bundle", str(bundle_dir), "--run", str(trained_run), "--out", str(out), "--images", "8",
        "--calibration-images", "8", "--max-quality-loss", "1"))


@pytest.fixture(scope="session")
def int8_attached_bundle_dir(bundle_dir, trained_run, tmp_path_factory) -> Path:
    """A copy of the test bundle carrying its int8 encoder (export.int8 --attach), judged on
    onnxruntime and OpenVINO; gate off for the reason above."""
    def build(out: Path) -> None:
        shutil.copytree(bundle_dir, out)
        run_cli("export.int8", "--bundle", str(out), "--run", str(trained_run), "--attach", "--images", "8",
                "--calibration-images", "8", "--max-quality-loss", "1")

    return built_once(tmp_path_factory, "tiny-int8-attached-bundle", build)


@pytest.fixture(scope="session")
def server(bundle_dir):
    """A live server on the test bundle (2 workers, so requests cross processes)."""
    srv = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "WEB_CONCURRENCY": "2"})
    srv.wait_ready()
    yield srv
    srv.stop()


API_KEYS = ("test-key-0123456789abcdef", "second-key-fedcba9876543210")


@pytest.fixture(scope="session")
def keyed_server(bundle_dir):
    """A live server (one worker) on the test bundle with API keys configured (API_KEYS)."""
    srv = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "WEB_CONCURRENCY": "1", "CAPTION_API_KEYS": ",".join(API_KEYS)})
    srv.wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def attention_server(attention_bundle_dir):
    """A live server (one worker) on the small attention bundle."""
    srv = GunicornServer({"CAPTION_BUNDLE": str(attention_bundle_dir), "WEB_CONCURRENCY": "1"})
    srv.wait_ready(120)
    yield srv
    srv.stop()

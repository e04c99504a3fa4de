"""Shared fixtures: a small synthetic dataset, a small trained run and its ONNX bundle, built
once per test session through the real command-line tools, and a live gunicorn server."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.server_process import ROOT, GunicornServer

PYTHON = sys.executable
# The fast tier (`make test-fast`) is every test not marked slow. A test is slow when it needs a
# model this session trains or a live server (these fixtures, directly or through another), or
# when its module says so (`pytestmark = pytest.mark.slow`: it trains, converts or serves by itself).
SLOW_FIXTURES = {"shapes_dataset", "trained_run", "bundle_dir", "attention_run", "attention_bundle_dir",
                 "fp16_bundle_dir", "int8_bundle_dir", "server", "attention_server", "notebooks", "imported"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
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


class BackgroundCli:
    """`python -m <args>` started now and awaited later: two trainings that each leave a core idle
    much of the time run side by side. Its output goes to `log` (a pipe nobody reads could fill
    and stall it)."""

    def __init__(self, log: Path, *args: str):
        self.args, self.log = args, log
        with open(log, "w") as out:
            self.process = subprocess.Popen([PYTHON, "-m", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, **QUIET_TF})

    def wait(self) -> None:
        if self.process.wait(timeout=600) != 0:
            raise AssertionError(f"python -m {' '.join(self.args)} failed ({self.process.returncode}):\n"
                                 f"{self.log.read_text()[-3000:]}")


_attention: list[tuple[Path, BackgroundCli]] = []


def attention_training(shapes_dataset: Path, tmp_path_factory) -> tuple[Path, BackgroundCli]:
    """The attention run's folder and its training, started by the first call."""
    if not _attention:
        out = tmp_path_factory.mktemp("runs") / "tiny-attention"
        _attention.append((out, BackgroundCli(
            out.parent / "training.log", "training.train", "--dataset", "shapes", "--data", str(shapes_dataset),
            "--out", str(out), "--cache-dir", str(out.parent / "cache"), "--attention", "--units", "48",
            "--embedding-dim", "24", "--learned-encoder", "--feature-norm", "none", "--adapter-channels", "16",
            "--cell-loss-weight", "1", "--epochs", "4", "--batch-size", "16", "--dropout", "0.1", "--quiet")))
    return _attention[0]


def pytest_sessionfinish(session, exitstatus):
    for _, training in _attention:  # a session stopped early leaves no training behind
        if training.process.poll() is None:
            training.process.kill()


@pytest.fixture(scope="session")
def trained_run(shapes_dataset, tmp_path_factory, request) -> Path:
    """A small decoder trained for a few epochs: enough for non-trivial captions. When the session
    also needs the attention run, that one trains meanwhile."""
    if any("attention_run" in item.fixturenames for item in request.session.items):
        attention_training(shapes_dataset, tmp_path_factory)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    run_cli("training.train", "--dataset", "shapes", "--data", str(shapes_dataset), "--out", str(out),
            "--cache-dir", str(out.parent / "cache"), "--units", "64", "--embedding-dim", "32",
            "--epochs", "6", "--batch-size", "32", "--dropout", "0.1",
            "--feature-norm", "l2-standardise", "--quiet")  # as the demo: its export parity is tested here
    return out


@pytest.fixture(scope="session")
def bundle_dir(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx_models") / "tiny"
    run_cli("export", "--run", str(trained_run), "--out", str(out))
    return out


@pytest.fixture(scope="session")
def attention_run(shapes_dataset, tmp_path_factory) -> Path:
    """A small attention decoder over a learned encoder part (as the demo), trained briefly (or
    already training beside trained_run)."""
    out, training = attention_training(shapes_dataset, tmp_path_factory)
    training.wait()
    return out


@pytest.fixture(scope="session")
def attention_bundle_dir(attention_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx_models") / "tiny-attention"
    run_cli("export", "--run", str(attention_run), "--out", str(out), "--no-repeat-ngram-size", "4")
    return out


@pytest.fixture(scope="session")
def fp16_bundle_dir(bundle_dir, trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx_models") / "tiny-fp16"
    # Quality gate off: the tests check the variant's form, that its figures are recorded and
    # that the gate refuses (test_fp16.py). How often a 6-epoch model's greedy captions survive
    # float16 depends on the processor (14/16 on one machine of this kind, 16/16 on another).
    run_cli("export.fp16", "--bundle", str(bundle_dir), "--run", str(trained_run), "--out", str(out), "--images", "32",
            "--max-quality-loss", "1")
    return out


@pytest.fixture(scope="session")
def int8_bundle_dir(bundle_dir, trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx_models") / "tiny-int8"
    # Quality gate off: the tests check the variant's form and that the figures are recorded,
    # and a random encoder quantises poorly (the demo's agreement is in docs/demo-model.md).
    run_cli("export.int8", "--bundle", str(bundle_dir), "--run", str(trained_run), "--out", str(out), "--images", "8",
            "--calibration-images", "8", "--max-quality-loss", "1")
    return out


@pytest.fixture(scope="session")
def server(bundle_dir):
    """A live server on the test bundle (2 workers, so requests cross processes)."""
    srv = GunicornServer({"CAPTION_BUNDLE": str(bundle_dir), "WEB_CONCURRENCY": "2"})
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

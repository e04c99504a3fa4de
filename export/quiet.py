"""Keeps TensorFlow's and absl's logging out of a command's output unless `--verbose` asks for it.

TensorFlow's C++ runtime and absl write to file descriptor 2 directly (oneDNN notices, "All log
messages before absl::InitializeLog()", grappler), and TF_CPP_MIN_LOG_LEVEL does not stop all of
them, so the descriptor itself is pointed at /dev/null while the tool runs; the tool's own lines go
through `sys.stderr`, which is reopened on the real standard error.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings


@contextlib.contextmanager
def tensorflow_silenced(enabled: bool = True):
    """Inside: native writes to stderr and Python warnings are dropped; `print(..., file=sys.stderr)`
    still shows. Does nothing when `enabled` is false."""
    if not enabled:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    original, sys.stderr = sys.stderr, os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8")
    # TensorFlow's Python logger makes its handler on first use, on whatever sys.stderr is then.
    tf_logger = logging.getLogger("tensorflow")
    level, tf_logger.level = tf_logger.level, logging.ERROR
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tf_logger.setLevel(level)
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = original
        os.dup2(saved, 2)
        os.close(saved)

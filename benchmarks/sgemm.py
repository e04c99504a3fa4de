"""numpy's float32 matrix-multiply rate, alone in a module that imports nothing else: the floor
measures it in a fresh process many times a run, so the child's start-up is kept to numpy's.

Usage: python -m benchmarks.sgemm SIZE REPEATS   (prints GFLOP/s)
"""
import sys
import time

import numpy as np


def rate(size: int, repeats: int) -> float:
    """Best-of-`repeats` GFLOP/s of a [size, size] x [size, size] float32 product, after one warm-up."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


if __name__ == "__main__":
    print(rate(int(sys.argv[1]), int(sys.argv[2])))

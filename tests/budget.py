"""The suite's time budget: runs `make test`'s pytest (or, with --fast, `make test-fast`'s) and fails
when it took longer than its limit would allow on the slow machines (15 minutes for the suite, 2
for the fast tier, on a machine whose numpy sgemm peaks near 200 GFLOP/s).

Usage: python -m tests.budget [--fast] [pytest arguments...]

These machines' speed differs by 5x and drifts within a run, so the time taken here is scaled to
the slow machine by the sgemm peak measured before and after (their mean). Only part of the
suite's time moves with that peak: most of it is Python, process starts (TensorFlow's imports),
sockets and sleeps. One suite measured on both kinds of machine (issue 35: 24.1 min at an sgemm
peak of 200 GFLOP/s, 20.1 min at 445) puts that part at 16.5 % of the time at 445; the rest is
taken as the same on both.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.floor import sgemm_peak_gflops

SLOW_MACHINE_GFLOPS = 200.0
LIMITS_S = {"suite": 15 * 60, "fast tier": 2 * 60}


CALIBRATION_GFLOPS, COMPUTE_SHARE = 445.0, 0.165  # the part of the time that moves with the peak, at 445


def scaled_to_slow_machine(seconds: float, peak_gflops: float) -> float:
    """`seconds` measured on a machine of `peak_gflops`, as on one of SLOW_MACHINE_GFLOPS: the
    share that is compute scaled by the peaks, the rest as it is."""
    def time_at(peak: float) -> float:  # relative to the calibration machine's
        return 1 - COMPUTE_SHARE + COMPUTE_SHARE * CALIBRATION_GFLOPS / peak
    return seconds * time_at(SLOW_MACHINE_GFLOPS) / time_at(peak_gflops)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the fast tier (pytest -m 'not slow')")
    args, pytest_args = parser.parse_known_args(argv)
    tier = "fast tier" if args.fast else "suite"
    before = sgemm_peak_gflops()
    started = time.monotonic()
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", *(["-m", "not slow"] if args.fast else []),
                            *pytest_args])
    took = time.monotonic() - started
    peak = (before + sgemm_peak_gflops()) / 2
    slow = scaled_to_slow_machine(took, peak)
    limit = LIMITS_S[tier]
    print(f"budget: the {tier} took {took / 60:.1f} min here (sgemm peak {peak:.0f} GFLOP/s), about "
          f"{slow / 60:.1f} min on a {SLOW_MACHINE_GFLOPS:.0f} GFLOP/s machine; the limit there is "
          f"{limit / 60:.0f} min")
    if code != 0:
        return code
    if slow > limit:
        print(f"budget: over by {(slow - limit) / 60:.1f} min", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

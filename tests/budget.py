"""The suite's time budget: runs `make test`'s pytest (or, with --fast, `make test-fast`'s) and fails
when it took longer than its limit would allow on the slow machines (15 minutes for the suite, 2
for the fast tier, on a machine whose numpy sgemm peaks near 200 GFLOP/s).

Usage: python -m tests.budget [--fast] [pytest arguments...]

These machines' speed differs by 5x and drifts within a run, so the time taken here is scaled to
the slow machine by the sgemm peak measured before and after (their mean), as if all of the
suite's time were compute: slower parts (process starts, sleeps, sockets) scale less, so the
scaled figure overstates the slow machine's time rather than understating it.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.floor import sgemm_peak_gflops

SLOW_MACHINE_GFLOPS = 200.0
LIMITS_S = {"suite": 15 * 60, "fast tier": 2 * 60}


def scaled_to_slow_machine(seconds: float, peak_gflops: float) -> float:
    """`seconds` measured on a machine of `peak_gflops`, as on one of SLOW_MACHINE_GFLOPS."""
    return seconds * peak_gflops / SLOW_MACHINE_GFLOPS


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

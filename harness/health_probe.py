"""Times GET URL every PERIOD seconds until a line arrives on stdin, then prints
{"latencies_ms": [...], "failed": N} as JSON (used by harness.scenarios.HealthProbe).

Usage: python -m harness.health_probe URL PERIOD
"""
from __future__ import annotations

import json
import sys
import threading
import time

import requests


def main(argv=None) -> int:
    url, period = (argv or sys.argv[1:])[:2]
    stop, latencies, failed = threading.Event(), [], 0
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    print("started", flush=True)
    session = requests.Session()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            ok = session.get(url, timeout=10).status_code == 200
        except requests.RequestException:
            ok, session = False, requests.Session()
        latencies.append((time.perf_counter() - started) * 1e3)
        failed += not ok
        stop.wait(float(period))
    print(json.dumps({"latencies_ms": latencies, "failed": failed}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

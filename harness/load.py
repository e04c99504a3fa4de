"""A bounded HTTP load generator for loopback servers: N client threads for a fixed time."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import requests


@dataclass
class LoadResult:
    """Every request's outcome: status (0 = connection error or timeout) and latency."""

    duration_s: float
    client_cpu_s: float = 0.0     # CPU the load generator itself used (it shares the server's cores)
    statuses: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    expected: list[int] = field(default_factory=list)
    retry_after_missing: int = 0  # 503 answers without a Retry-After header

    @property
    def sent(self) -> int:
        return len(self.statuses)

    def count(self, predicate) -> int:
        return sum(1 for s in self.statuses if predicate(s))

    def summary(self) -> dict:
        latencies = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "requests": self.sent,
            "throughput_rps": round(self.sent / self.duration_s, 2),
            "server_errors_5xx": self.count(lambda s: s >= 500),
            "connection_errors": self.count(lambda s: s == 0),
            "unexpected_status": sum(1 for s, e in zip(self.statuses, self.expected) if s != e),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p95_ms": round(float(np.percentile(latencies, 95)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "max_ms": round(float(latencies.max()), 1),
            "client_cpu_ms_per_request": round(1e3 * self.client_cpu_s / max(1, self.sent), 2),
            "shed_503": self.count(lambda s: s == 503),
            "shed_503_without_retry_after": self.retry_after_missing,
        }

    def extend(self, other: "LoadResult") -> None:
        """Add another run's requests and time, as if they had been one run."""
        self.duration_s += other.duration_s
        self.client_cpu_s += other.client_cpu_s
        self.retry_after_missing += other.retry_after_missing
        for name in ("statuses", "latencies_ms", "expected"):
            getattr(self, name).extend(getattr(other, name))

    def latency_max_ms(self, status: int) -> float:
        """The longest answer with `status` (0 when none)."""
        return round(max((ms for s, ms in zip(self.statuses, self.latencies_ms) if s == status), default=0.0), 1)


def run_load(url: str, requests_to_send, concurrency: int, duration_s: float, timeout_s: float = 30,
             honour_retry_after: bool = False) -> LoadResult:
    """Send requests from `concurrency` threads for `duration_s` seconds.

    `requests_to_send` is a list of (kwargs for requests.Request, expected status); each thread
    cycles through it from its own offset, so good and bad requests interleave. With
    `honour_retry_after`, a client told 503 waits as long as Retry-After says before its next
    request, as well-behaved HTTP clients do (urllib3's Retry, for one).
    """
    result = LoadResult(duration_s)
    lock = threading.Lock()
    # Encoded once: on loopback the client shares the server's cores, so every millisecond it
    # spends building multipart bodies is taken from the server it measures.
    prepared = [(requests.Request("POST", url, **kwargs).prepare(), expected) for kwargs, expected in requests_to_send]
    deadline = time.monotonic() + duration_s

    def client(offset: int) -> None:
        session = requests.Session()
        i = offset
        while time.monotonic() < deadline:
            request, expected = prepared[i % len(prepared)]
            i += 1
            started = time.perf_counter()
            try:
                response = session.send(request, timeout=timeout_s)
                status = response.status_code
                missing = status == 503 and "Retry-After" not in response.headers
            except requests.RequestException:  # a timeout closes the connection: the client has left
                status, missing = 0, False
                session = requests.Session()
            elapsed = (time.perf_counter() - started) * 1e3
            with lock:
                result.statuses.append(status)
                result.latencies_ms.append(elapsed)
                result.expected.append(expected)
                result.retry_after_missing += missing
            if honour_retry_after and status == 503 and not missing:
                time.sleep(min(float(response.headers["Retry-After"]), max(0.0, deadline - time.monotonic())))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(concurrency)]
    started, cpu = time.monotonic(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + timeout_s + 5)
    result.duration_s = time.monotonic() - started
    result.client_cpu_s = time.process_time() - cpu
    return result

"""Load a served route over HTTP (`servegraph bench`): N requests at concurrency C, every
response counted by status, latency percentiles and throughput. Works against a Serve route
or `servegraph run --local` alike."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class LoadReport:
    url: str
    requests: int
    concurrency: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    @property
    def answered(self) -> int:
        """Requests that got an HTTP response (any status)."""
        return sum(n for status, n in self.statuses.items() if status.isdigit())

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def render(self) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        mean = statistics.fmean(self.latencies_ms) if self.latencies_ms else float("nan")
        return "\n".join([
            f"{self.url}: {self.requests} requests at concurrency {self.concurrency} "
            f"in {self.seconds:.2f} s",
            f"  throughput {self.requests / self.seconds:.1f} req/s" if self.seconds else "",
            f"  latency ms: p50 {self.percentile(0.5):.2f}  p99 {self.percentile(0.99):.2f}  "
            f"mean {mean:.2f}",
            f"  responses: {statuses}",
        ])


async def load(url: str, payload: Any, *, requests: int, concurrency: int,
               timeout_s: float = 60.0) -> LoadReport:
    """Send `requests` POSTs of `payload` from `concurrency` workers, back to back."""
    report = LoadReport(url, requests, concurrency)
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            for _ in remaining:
                started = time.perf_counter()
                try:
                    response = await client.post(url, json=payload)
                except httpx.TimeoutException:
                    report.statuses["timeout"] += 1
                    continue
                except httpx.TransportError as exc:
                    report.statuses[f"error {type(exc).__name__}"] += 1
                    continue
                report.latencies_ms.append((time.perf_counter() - started) * 1000)
                report.statuses[str(response.status_code)] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.seconds = time.perf_counter() - started
    return report

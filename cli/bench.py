"""Load a served route over HTTP (`servegraph bench`): N requests at concurrency C, every
response counted by status, latency percentiles and throughput. Works against a Serve route
or `servegraph run --local` alike."""

from __future__ import annotations

import asyncio
import json
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


@dataclass(frozen=True)
class Case:
    """One kind of request in a mixed load: `body` sent as JSON, or `raw` bytes as they are
    (malformed on purpose); a good case names its `expect`ed output, a bad one `bad=True`
    (it must get a 4xx)."""

    body: Any = None
    raw: str | None = None
    expect: Any = None
    bad: bool = False

    @classmethod
    def parse(cls, line: str) -> Case:
        data = json.loads(line)
        return cls(body=data.get("body"), raw=data.get("raw"), expect=data.get("expect"),
                   bad=bool(data.get("bad", False)))


@dataclass
class CheckedReport(LoadReport):
    """A mixed load's report: what every response said, checked against its case."""

    good: int = 0
    bad: int = 0
    correct: int = 0
    wrong: list[str] = field(default_factory=list)
    bad_not_4xx: list[str] = field(default_factory=list)
    unnamed_5xx: list[str] = field(default_factory=list)
    first_error_at_s: float | None = None
    last_error_at_s: float | None = None

    def failed_at(self, at_s: float) -> None:
        """Note a failure `at_s` seconds into the load: the first and last bound the outage."""
        self.first_error_at_s = self.first_error_at_s or at_s
        self.last_error_at_s = at_s

    def check(self, case: Case, request_id: str, response: httpx.Response, *,
              at_s: float) -> None:
        """Count one answer and hold it to its case: a bad case must get a 4xx; a good one
        must get a 200 with the expected output, and a 5xx must name what failed."""
        status = response.status_code
        self.statuses[str(status)] += 1
        if case.bad:
            if not 400 <= status < 500:
                self.bad_not_4xx.append(_said(request_id, response))
            return
        if status == 200 and response.json() == case.expect:
            self.correct += 1
            return
        self.failed_at(at_s)
        if status >= 500 and not _names_a_stage(response):
            self.unnamed_5xx.append(_said(request_id, response))
        self.wrong.append(_said(request_id, response))

    @property
    def lost(self) -> int:
        """Requests with no HTTP response at all (a timeout or a connection error)."""
        return self.requests - self.answered

    def classes(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for status, n in self.statuses.items():
            counts[f"{status[0]}xx" if status.isdigit() else
                   "timeouts" if status == "timeout" else "connection_errors"] += n
        return dict(counts)

    def render(self) -> str:
        """The load's report, then what the checks found."""
        unnamed = f" ({len(self.unnamed_5xx)} a 5xx naming no stage)" if self.unnamed_5xx else ""
        return "\n".join([
            super().render(),
            f"  checked: {self.correct} of {self.good} good requests correct, "
            f"{len(self.wrong)} wrong{unnamed}; {len(self.bad_not_4xx)} of {self.bad} bad "
            "requests not answered with a 4xx",
        ])

    def summary(self) -> dict[str, Any]:
        """The report as `--json` writes it: each list of answers cut to its first
        `LISTED`, beside its `_total`."""
        return {
            "url": self.url, "requests": self.requests, "concurrency": self.concurrency,
            "seconds": round(self.seconds, 3), "good": self.good, "bad": self.bad,
            "answered": self.answered, "lost": self.lost, "correct": self.correct,
            "statuses": dict(self.statuses), "classes": self.classes(),
            **{key: values for name in ("wrong", "bad_not_4xx", "unnamed_5xx")
               for key, values in self._listed(name).items()},
            "first_error_at_s": self.first_error_at_s, "last_error_at_s": self.last_error_at_s,
            "p50_ms": round(self.percentile(0.5), 2), "p99_ms": round(self.percentile(0.99), 2),
        }

    def _listed(self, name: str) -> dict[str, Any]:
        answers: list[str] = getattr(self, name)
        return {name: answers[:LISTED], f"{name}_total": len(answers)}


# answers of each kind (wrong, bad not 4xx, unnamed 5xx) the JSON summary lists
LISTED = 20


async def load_cases(url: str, cases: list[Case], *, requests: int, concurrency: int,
                     timeout_s: float = 60.0, progress_every: int = 0) -> CheckedReport:
    """Send `requests` POSTs cycling through `cases` from `concurrency` workers; check each
    answer: a good case's output equals its `expect`, a bad case gets a 4xx, a 5xx names a
    stage. With `progress_every`, print `answered N` to stdout every N requests (a parent
    process waits on these lines to inject faults mid-load)."""
    report = CheckedReport(url, requests, concurrency)
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    done = 0
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            nonlocal done
            for index in remaining:
                await _one_case(client, report, cases[index % len(cases)], index, began)
                done += 1
                if progress_every and done % progress_every == 0:
                    print(f"answered {done}", flush=True)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        report.seconds = time.perf_counter() - began
    return report


async def _one_case(client: httpx.AsyncClient, report: CheckedReport, case: Case, index: int,
                    began: float) -> None:
    """Send request `index` (`case`) and record it in `report`: no response at all (a timeout,
    a connection error) is counted by kind, an answer is checked against the case."""
    report.bad += case.bad
    report.good += not case.bad
    started = time.perf_counter()
    try:
        response = await _send(client, report.url, case, index)
    except httpx.TimeoutException:
        report.statuses["timeout"] += 1
        report.failed_at(started - began)
        return
    except httpx.TransportError as exc:
        report.statuses[f"error {type(exc).__name__}"] += 1
        report.failed_at(started - began)
        return
    report.latencies_ms.append((time.perf_counter() - started) * 1000)
    report.check(case, f"r{index}", response, at_s=started - began)


async def _send(client: httpx.AsyncClient, url: str, case: Case, index: int) -> httpx.Response:
    """POST the case's body as JSON, or its `raw` text as it is (malformed on purpose), with
    `x-request-id: r<index>` so a wrong answer can be found in the service's logs."""
    headers = {"x-request-id": f"r{index}"}
    if case.raw is not None:
        return await client.post(url, content=case.raw.encode(),
                                 headers={"content-type": "application/json", **headers})
    return await client.post(url, json=case.body, headers=headers)


def _said(request_id: str, response: httpx.Response) -> str:
    """A wrong answer as the report lists it: the request, its status, its body's start."""
    return f"{request_id}: {response.status_code} {response.text[:200]}"


def _names_a_stage(response: httpx.Response) -> bool:
    """A 5xx that says what failed: servegraph's body naming the stage, or Serve's own
    503 (no replica yet, or the queue is full)."""
    try:
        body = response.json()
    except ValueError:
        return response.status_code == 503
    return isinstance(body, dict) and bool(body.get("stage") or body.get("error"))

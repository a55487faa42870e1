"""The spine benchmark's results: rows, ratios against DESIGN.md's targets, the report.

Pure functions over measured rows, kept apart from the measuring script (bench_spine.py) so
the script stays about running contenders and this module about judging them.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

THROUGHPUT_FLAG = "RAY_SERVE_THROUGHPUT_OPTIMIZED"


@dataclass(frozen=True)
class Latency:
    """Sequential in-process requests of one contender (part a)."""

    contender: str
    requests: int
    mean_us: float
    p50_us: float
    p99_us: float


@dataclass(frozen=True)
class Load:
    """One contender under one load on Serve (part b)."""

    contender: str
    transport: str
    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    round: int = 0


@dataclass(frozen=True)
class Ratio:
    """A measured ratio and the bound DESIGN.md sets for it."""

    name: str
    value: float
    at_least: bool
    bound: float

    @property
    def target(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.bound:g}"

    @property
    def passed(self) -> bool:
        return self.value >= self.bound if self.at_least else self.value <= self.bound


def environment(optimized: bool) -> dict[str, Any]:
    """What the numbers depend on; imported late, as Ray must see the Serve switch first."""
    import ray

    return {"ray": ray.__version__, "python": platform.python_version(),
            "cpus": os.cpu_count(), THROUGHPUT_FLAG: int(optimized)}


def mean(samples: Sequence[float]) -> float:
    """Arithmetic mean; the tables show it beside p50 because a skewed tail moves it."""
    return sum(samples) / len(samples)


def quantile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of sorted samples."""
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def median_rounds(loads: list[Load]) -> list[Load]:
    """Per (contender, transport, concurrency), the round with the median req/s: one noisy
    round on a shared machine must not decide a ratio."""
    groups: dict[tuple[str, str, int], list[Load]] = {}
    for row in loads:
        groups.setdefault((row.contender, row.transport, row.concurrency), []).append(row)
    return [sorted(rows, key=lambda r: r.rps)[(len(rows) - 1) // 2] for rows in groups.values()]


def local_ratios(rows: list[Latency]) -> list[Ratio]:
    """Part (a): far below local testing mode, within a few times plain asyncio."""
    by = {row.contender: row for row in rows}
    if len(by) < 3:
        return []
    ltm, local, plain = by["serve-local-testing-mode"], by["servegraph-local"], by["asyncio"]
    return [
        Ratio("local-testing-mode / servegraph-local, p50", ltm.p50_us / local.p50_us,
              True, 30),
        Ratio("local-testing-mode / servegraph-local, mean", ltm.mean_us / local.mean_us,
              True, 30),
        Ratio("servegraph-local / asyncio, p50", local.p50_us / plain.p50_us, False, 5),
        Ratio("servegraph-local / asyncio, mean", local.mean_us / plain.mean_us, False, 5),
    ]


def serve_ratios(loads: list[Load], concurrency: int) -> list[Ratio]:
    """Part (b), per transport: match the best hand-written setting, beat Serve's defaults."""
    by = {(row.contender, row.transport, row.concurrency): row for row in loads}
    ratios: list[Ratio] = []
    for transport in ("handle", "http"):
        def get(contender: str, c: int, transport: str = transport) -> Load | None:
            return by.get((contender, transport, c))

        sg_hi, tuned_hi, default_hi = (get(name, concurrency) for name in
                                       ("servegraph", "hand-tuned", "hand-defaults"))
        sg_lo, tuned_lo = get("servegraph", 1), get("hand-tuned", 1)
        if not (sg_hi and tuned_hi and default_hi and sg_lo and tuned_lo):
            continue
        c = f"c={concurrency}"
        ratios += [
            Ratio(f"{transport}: servegraph / hand-tuned req/s, {c}",
                  sg_hi.rps / tuned_hi.rps, True, 1.0),
            Ratio(f"{transport}: servegraph / hand-tuned p50, {c}",
                  sg_hi.p50_ms / tuned_hi.p50_ms, False, 1.0),
            Ratio(f"{transport}: servegraph / hand-tuned p50, c=1",
                  sg_lo.p50_ms / tuned_lo.p50_ms, False, 1.0),
            Ratio(f"{transport}: servegraph / hand-defaults req/s, {c}",
                  sg_hi.rps / default_hi.rps, True, 5),
        ]
    return ratios


def report(optimized: bool, local: list[Latency], loads: list[Load],
           ratios: list[Ratio], rounds: int) -> str:
    """The plain-text tables and ratio lines printed on stdout."""
    switch = f"{THROUGHPUT_FLAG}={int(optimized)}"
    env = environment(optimized)
    lines = [f"servegraph spine benchmark: Ray {env['ray']}, Python {env['python']}, "
             f"{env['cpus']} CPUs; part (b) Serve setting: {switch} (all contenders)"]
    if local:
        lines += ["", "(a) in-process diamond, sequential requests, one event loop "
                  f"({THROUGHPUT_FLAG} unset)",
                  f"{'contender':<26}{'requests':>9}{'mean us':>11}{'p50 us':>11}{'p99 us':>11}"]
        lines += [f"{r.contender:<26}{r.requests:>9}{r.mean_us:>11.1f}{r.p50_us:>11.1f}"
                  f"{r.p99_us:>11.1f}" for r in local]
    if loads:
        which = f", median round of {rounds} by req/s" if rounds > 1 else ""
        lines += ["", f"(b) diamond on Ray Serve ({switch}), back-to-back requests per "
                  f"worker{which}",
                  "each application alone on the cluster, deleted after its loads",
                  f"{'contender':<16}{'transport':<10}{'conc':>5}{'requests':>9}{'secs':>7}"
                  f"{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"]
        lines += [f"{r.contender:<16}{r.transport:<10}{r.concurrency:>5}{r.requests:>9}"
                  f"{r.seconds:>7.2f}{r.rps:>9.1f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
                  for r in loads]
    if ratios:
        lines += ["", "ratios"]
        lines += [f"  {r.name:<52}{r.value:>8.2f}x  target {r.target:<7} "
                  f"{'PASS' if r.passed else 'MISS'}" for r in ratios]
    return "\n".join(lines)

"""Reading servegraph's metrics back (`executors/ray/metrics`) from Ray's Prometheus endpoints,
for `servegraph doctor` and `top`: one scrape of every alive node (`ray.nodes()` gives each
node's `MetricsExportPort`), parsed with `prometheus_client`'s parser into flat `Sample`s, and
summed per stage (`stage_figures`, a pure function tested on literal text).

Ray exports one series per worker process (`WorkerId`), so every figure here is a sum over
the replicas of a stage; counters keep a killed replica's series, gauges fade a few seconds
after their last set, which is why in-flight calls are read as `started - calls`. Two scrapes
`window_s` apart (`delta`) give the recent latency and rate instead of those since start.
"""

from __future__ import annotations

import math
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import ray
from prometheus_client.parser import text_string_to_metric_families

PREFIX = "ray_servegraph_"


@dataclass(frozen=True)
class Sample:
    """One line of the endpoint: `name` as exported (with `_total`, `_bucket`, ...)."""

    name: str
    labels: dict[str, str]
    value: float


def endpoints() -> list[str]:
    """The metrics URL of every alive node of the connected Ray cluster."""
    return [f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            for node in ray.nodes() if node.get("Alive") and node.get("MetricsExportPort")]


def scrape(timeout_s: float = 5.0) -> str:
    """Every node's metrics text, joined; a node that does not answer is left out."""
    texts = []
    for url in endpoints():
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                texts.append(response.read().decode())
        except OSError:
            continue
    return "\n".join(texts)


def parse(text: str, prefixes: tuple[str, ...] = (PREFIX, "ray_serve_"), *,
          application: str | None = None) -> list[Sample]:
    """The samples of the families whose names start with one of `prefixes` (with
    `application`, only its series). Only their lines reach the (pure Python) parser: a
    cluster's endpoint serves every Ray metric of every process, and Serve's keep the series
    of applications deleted long ago."""
    label = None if application is None else f'application="{application}"'
    wanted = "\n".join(line for line in text.splitlines()
                       if _named(line).startswith(prefixes)
                       and (label is None or line.startswith("#") or label in line))
    return [Sample(sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(wanted)
            if family.name.startswith(prefixes)
            for sample in family.samples]


def _named(line: str) -> str:
    """The metric name a line of the text format starts with (`# HELP name ...` and
    `# TYPE name ...` name theirs second; other comments name none)."""
    if not line.startswith("#"):
        return line
    parts = line.split(None, 3)
    return parts[2] if len(parts) > 2 and parts[1] in ("HELP", "TYPE") else ""


def delta(after: list[Sample], before: list[Sample]) -> list[Sample]:
    """`after` minus `before`, series by series (counters and histograms; a series new since
    `before` counts whole): what happened between two scrapes."""
    earlier = {_key(sample): sample.value for sample in before}
    return [Sample(s.name, s.labels, s.value - earlier.get(_key(s), 0.0)) for s in after]


def _key(sample: Sample) -> tuple[Any, ...]:
    return sample.name, tuple(sorted(sample.labels.items()))


@dataclass
class StageFigures:
    """One stage's figures, summed over its replicas (and nodes, for the latency)."""

    stage: str
    calls: float = 0.0
    started: float = 0.0
    errors: dict[str, float] = field(default_factory=dict)
    timeouts: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    batch_buckets: dict[float, float] = field(default_factory=dict)
    replica_starts: float = 0.0
    init_seconds: float = 0.0
    queued: float = 0.0        # Serve's handle queue (`serve_deployment_queued_queries`)
    map_widths: dict[float, float] = field(default_factory=dict)

    @property
    def in_flight(self) -> float:
        return max(0.0, self.started - self.calls)

    def latency_ms(self, quantile: float) -> float | None:
        return bucket_quantile(self.buckets, quantile)

    @property
    def batch_mean(self) -> float | None:
        """Mean items per batch call, from the histogram's buckets (upper bounds)."""
        return bucket_mean(self.batch_buckets)

    @property
    def cold_start_s(self) -> float | None:
        return self.init_seconds / self.replica_starts if self.replica_starts else None


def bucket_quantile(buckets: dict[float, float], quantile: float) -> float | None:
    """Prometheus' `histogram_quantile` on cumulative buckets (linear inside a bucket;
    the largest finite bound for the +Inf bucket); None without observations."""
    bounds = sorted(buckets)
    total = buckets.get(math.inf, buckets[bounds[-1]] if bounds else 0.0)
    if total <= 0:
        return None
    rank, lower, below = quantile * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def bucket_mean(buckets: dict[float, float]) -> float | None:
    """The mean of a histogram of whole sizes whose bounds are the sizes' powers of two: each
    bucket's count at its upper bound (exact for sizes on the bounds)."""
    bounds, below, weighted = sorted(buckets), 0.0, 0.0
    for bound in bounds:
        count = buckets[bound] - below
        weighted += count * (bound if not math.isinf(bound) else (bounds[-2] if
                                                                   len(bounds) > 1 else 1))
        below = buckets[bound]
    return weighted / below if below else None


def stage_figures(samples: list[Sample], application: str) -> dict[str, StageFigures]:
    """Each stage's figures of `application`, by stage name (Serve's queue by deployment)."""
    stages: dict[str, StageFigures] = defaultdict(lambda: StageFigures(""))
    for sample in samples:
        labels = sample.labels
        if labels.get("application") != application:
            continue
        stage = labels.get("stage") or labels.get("deployment")
        if not stage:
            continue
        figures = stages[stage]
        figures.stage = stage
        _add(figures, sample)
    return dict(stages)


def _add(figures: StageFigures, sample: Sample) -> None:
    name, value, labels = sample.name.removeprefix(PREFIX), sample.value, sample.labels
    if name == "stage_calls_total":
        figures.calls += value
    elif name == "stage_started_total":
        figures.started += value
    elif name == "stage_errors_total":
        kind = labels.get("error_type", "")
        figures.errors[kind] = figures.errors.get(kind, 0.0) + value
    elif name == "stage_timeouts_total":
        figures.timeouts += value
    elif name == "stage_latency_ms_bucket":
        _bucket(figures.buckets, labels, value)
    elif name == "batch_size_bucket":
        _bucket(figures.batch_buckets, labels, value)
    elif name == "map_width_bucket":
        _bucket(figures.map_widths, labels, value)
    elif name == "replica_starts_total":
        figures.replica_starts += value
    elif name == "replica_init_seconds_total":
        figures.init_seconds += value
    elif sample.name == "ray_serve_deployment_queued_queries":
        figures.queued += value


def _bucket(buckets: dict[float, float], labels: dict[str, str], value: float) -> None:
    bound = float(labels.get("le", "inf"))
    buckets[bound] = buckets.get(bound, 0.0) + value


def pipeline_latency(samples: list[Sample], application: str) -> dict[str, dict[float, float]]:
    """End-to-end latency buckets per pipeline (and route: `pipeline route`) of `application`."""
    found: dict[str, dict[float, float]] = defaultdict(dict)
    for sample in samples:
        if sample.name == f"{PREFIX}pipeline_latency_ms_bucket" and \
                sample.labels.get("application") == application:
            route = sample.labels.get("route", "")
            key = f"{sample.labels.get('pipeline', '')}{' ' + route if route else ''}"
            _bucket(found[key], sample.labels, sample.value)
    return dict(found)

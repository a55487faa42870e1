"""Per-stage metrics on Ray's metrics API (`ray.util.metrics`), so they reach Ray's Prometheus
endpoint (each node's metrics agent, `MetricsExportPort` in `ray.nodes()`) and its dashboard
with no server of servegraph's own. Serve's own metrics are per deployment; a pipeline spans
several deployments and a stage holds several call nodes, so these carry `application`,
`stage` and `node` labels (Ray adds `WorkerId` and the node's address: one series per process).

Ray names them `ray_<name>` on the endpoint (counters with `_total`):

- `servegraph_stage_calls` (application, stage, node): calls finished, ok or not; a map's
  elements count one each. `servegraph_stage_started` (same labels): calls begun; in flight =
  started - calls, summed over replicas (what `servegraph doctor` reads).
- `servegraph_stage_errors` (+ error_type) and `servegraph_stage_timeouts`.
- `servegraph_stage_latency_ms` (application, stage, node): a replica's time in the call.
- `servegraph_stage_in_flight` (application, stage): a gauge per replica, set as it changes.
  Ray exports a gauge only for a few seconds after it is set, so readers of a quiet stage use
  the counters instead.
- `servegraph_batch_size` (application, stage, method): the size of each `sg.batch` call.
- `servegraph_map_width` (application, stage, node): the elements of each `sg.map`.
- `servegraph_replica_starts`, `servegraph_replica_init_seconds` (application, stage): each
  replica's constructor, counted and timed (counters: they outlive a killed replica, which
  tells a replaced one apart, and give the mean cold start exactly).
- `servegraph_pipeline_latency_ms`, `servegraph_pipeline_requests` (+ outcome) (application,
  pipeline, route): a request end to end in the driver; `route` is the `sg.App` route.

Instruments are made once per process, on first use (`instruments`), never per call; each
recorder builds its label dicts once. `SERVEGRAPH_METRICS=0` (read where a replica or driver
starts, so set it in the deployment's `runtime_env` or before Ray starts) turns them off: the
recorders are then None and each hook is one `if`.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.exceptions import RayServeException
from ray.util import metrics

from ...errors import StageError, StageTimeoutError

METRICS_ENV = "SERVEGRAPH_METRICS"
OFF = frozenset({"0", "false", "no", "off"})
LATENCY_MS_BUCKETS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000,
                      30000, 60000]
SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096]
STAGE_TAGS = ("application", "stage", "node")
FLUSH_S = 0.5  # a stage's started and finished counts reach Ray at most this late
PIPELINE_TAGS = ("application", "pipeline", "route")


def enabled() -> bool:
    """Whether this process records metrics (on unless `SERVEGRAPH_METRICS` says off)."""
    return os.environ.get(METRICS_ENV, "1").strip().lower() not in OFF


@dataclass(frozen=True)
class Instruments:
    calls: metrics.Counter
    started: metrics.Counter
    errors: metrics.Counter
    timeouts: metrics.Counter
    latency: metrics.Histogram
    in_flight: metrics.Gauge
    batch_size: metrics.Histogram
    map_width: metrics.Histogram
    starts: metrics.Counter
    init_seconds: metrics.Counter
    pipeline_latency: metrics.Histogram
    pipeline_requests: metrics.Counter


@functools.cache
def instruments() -> Instruments:
    """This process's instruments, made on first use (Ray registers each name once)."""
    stage_tags = ("application", "stage")
    return Instruments(
        calls=metrics.Counter("servegraph_stage_calls", "stage calls finished",
                              tag_keys=STAGE_TAGS),
        started=metrics.Counter("servegraph_stage_started", "stage calls begun",
                                tag_keys=STAGE_TAGS),
        errors=metrics.Counter("servegraph_stage_errors", "stage calls failed, by error type",
                               tag_keys=(*STAGE_TAGS, "error_type")),
        timeouts=metrics.Counter("servegraph_stage_timeouts", "stage calls past timeout_s",
                                 tag_keys=STAGE_TAGS),
        latency=metrics.Histogram("servegraph_stage_latency_ms", "a stage call, in a replica",
                                  boundaries=LATENCY_MS_BUCKETS, tag_keys=STAGE_TAGS),
        in_flight=metrics.Gauge("servegraph_stage_in_flight", "calls running in a replica",
                                tag_keys=stage_tags),
        batch_size=metrics.Histogram("servegraph_batch_size", "items in an sg.batch call",
                                     boundaries=SIZE_BUCKETS,
                                     tag_keys=("application", "stage", "method")),
        map_width=metrics.Histogram("servegraph_map_width", "elements of an sg.map",
                                    boundaries=SIZE_BUCKETS, tag_keys=STAGE_TAGS),
        starts=metrics.Counter("servegraph_replica_starts", "stage replicas constructed",
                               tag_keys=stage_tags),
        init_seconds=metrics.Counter("servegraph_replica_init_seconds",
                                     "seconds in stage constructors", tag_keys=stage_tags),
        pipeline_latency=metrics.Histogram(
            "servegraph_pipeline_latency_ms", "a request end to end, in the driver",
            boundaries=LATENCY_MS_BUCKETS, tag_keys=PIPELINE_TAGS),
        pipeline_requests=metrics.Counter(
            "servegraph_pipeline_requests", "requests by outcome",
            tag_keys=(*PIPELINE_TAGS, "outcome")),
    )


def application() -> str:
    """The Serve application this replica serves ("" outside a replica)."""
    try:
        return serve.get_replica_context().app_name
    except RayServeException:  # not in a replica (a unit test's driver)
        return ""


class Buffered(abc.ABC):
    """A recorder that adds counts up and hands them to Ray in `flush`, at most `FLUSH_S`
    after the first one since the last flush."""

    flushing = False  # a flush is scheduled

    @abc.abstractmethod
    def flush(self) -> None:
        """Hand what was added up since the last flush to Ray (and clear `flushing`)."""

    def flush_soon(self) -> None:
        if self.flushing:
            return
        try:
            asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
        except RuntimeError:  # no event loop here: at once
            self.flush()
            return
        self.flushing = True


class StageMetrics(Buffered):
    """A stage replica's recorder: calls, errors, latency and in-flight per node. A call's
    latency is observed as it ends; its started and finished counts and the in-flight gauge
    are added up here and handed to Ray at most `FLUSH_S` later (Ray exports every few
    seconds anyway), so a call costs one of Ray's metric records, not five: a stage fused
    into the driver makes several calls a request on the driver's one event loop."""

    def __init__(self, stage: str) -> None:
        self.app = application()
        self.stage = stage
        self.own = {"application": self.app, "stage": stage}
        self.tags: dict[str, dict[str, str]] = {}  # by node id, made on its first call
        self.instruments = instruments()
        self.running = 0
        self.counts: dict[str, list[int]] = {}  # node id -> [started, finished] not yet sent

    def started(self, init_seconds: float) -> None:
        """One replica constructed, its constructor having taken `init_seconds`."""
        self.instruments.starts.inc(1, tags=self.own)
        self.instruments.init_seconds.inc(max(init_seconds, 1e-9), tags=self.own)

    def call(self, node_id: str) -> CallTimer:
        """A context timing one call of `node_id`; a failure counted by its error type."""
        tags = self.tags.get(node_id)
        if tags is None:
            tags = self.tags[node_id] = {**self.own, "node": node_id}
        return CallTimer(self, tags)

    def failed(self, tags: dict[str, str], exc: BaseException) -> None:
        kind = exc.error_type if isinstance(exc, StageError) and exc.error_type else \
            type(exc).__name__
        self.instruments.errors.inc(1, tags={**tags, "error_type": kind})
        if isinstance(exc, (StageTimeoutError, TimeoutError)):
            self.instruments.timeouts.inc(1, tags=tags)

    def count(self, node_id: str, started: int, finished: int) -> None:
        """A call of `node_id` started (1, 0) or finished (0, 1): sent by `flush`, soon."""
        counts = self.counts.get(node_id)
        if counts is None:
            counts = self.counts[node_id] = [0, 0]
        counts[0] += started
        counts[1] += finished
        self.running += started - finished
        self.flush_soon()

    def flush(self) -> None:
        """Hand the counts added up since the last flush to Ray, and the in-flight gauge."""
        self.flushing = False
        found, counts, self.counts = self.instruments, self.counts, {}
        for node_id, (started, finished) in counts.items():
            if started:
                found.started.inc(started, tags=self.tags[node_id])
            if finished:
                found.calls.inc(finished, tags=self.tags[node_id])
        found.in_flight.set(self.running, tags=self.own)

    def batched(self, method: str, fn: Callable[..., Awaitable[Any]]
                ) -> Callable[..., Awaitable[Any]]:
        """`fn` (an `isolating` batch function) recording each batch's size; it keeps
        `fn`'s name and signature."""
        tags = {**self.own, "method": method}
        histogram = self.instruments.batch_size

        @functools.wraps(fn)
        async def run_batch(*columns: list[Any], **keyed: list[Any]) -> Any:
            first = columns[0] if columns else next(iter(keyed.values()), [])
            histogram.observe(len(first), tags=tags)
            return await fn(*columns, **keyed)

        return run_batch


class CallTimer:
    """`StageMetrics.call`'s context (a plain object: a stage fused into the driver enters
    one per call, so it costs no generator)."""

    __slots__ = ("begun", "metrics", "tags")

    def __init__(self, metrics: StageMetrics, tags: dict[str, str]) -> None:
        self.metrics = metrics
        self.tags = tags
        self.begun = 0.0

    def __enter__(self) -> None:
        self.metrics.count(self.tags["node"], 1, 0)
        self.begun = time.perf_counter()

    def __exit__(self, kind: Any, exc: BaseException | None, trace: Any) -> None:
        if exc is not None:
            self.metrics.failed(self.tags, exc)
        self.metrics.instruments.latency.observe((time.perf_counter() - self.begun) * 1000,
                                                 tags=self.tags)
        self.metrics.count(self.tags["node"], 0, 1)


def stage_metrics(stage: str) -> StageMetrics | None:
    """A replica's recorder, or None with metrics off."""
    return StageMetrics(stage) if enabled() else None


class PipelineMetrics(Buffered):
    """A driver's recorder: each request end to end, and each map's width. A request's
    latency is observed as it ends; the requests by outcome are added up here and handed to
    Ray at most `FLUSH_S` later, as a stage's calls are."""

    def __init__(self, pipeline: str, route: str = "") -> None:
        self.app = application()
        self.tags = {"application": self.app, "pipeline": pipeline, "route": route}
        self.outcome = {outcome: {**self.tags, "outcome": outcome} for outcome in ("ok", "error")}
        self.instruments = instruments()
        self.map_tags: dict[str, dict[str, str]] = {}
        self.counts = {"ok": 0, "error": 0}  # requests by outcome not yet sent

    def request(self) -> RequestTimer:
        """A context timing one request and counting it by its outcome."""
        return RequestTimer(self)

    def ended(self, begun: float, outcome: str) -> None:
        self.instruments.pipeline_latency.observe((time.perf_counter() - begun) * 1000,
                                                  tags=self.tags)
        self.counts[outcome] += 1
        self.flush_soon()

    def flush(self) -> None:
        """Hand the requests counted since the last flush to Ray."""
        self.flushing = False
        for outcome, count in self.counts.items():
            if count:
                self.instruments.pipeline_requests.inc(count, tags=self.outcome[outcome])
                self.counts[outcome] = 0

    def map_width(self, stage: str, node_id: str, width: int) -> None:
        tags = self.map_tags.get(node_id)
        if tags is None:
            tags = self.map_tags[node_id] = {"application": self.app, "stage": stage,
                                             "node": node_id}
        self.instruments.map_width.observe(width, tags=tags)


class RequestTimer:
    """`PipelineMetrics.request`'s context (a plain object: one a request)."""

    __slots__ = ("begun", "metrics")

    def __init__(self, metrics: PipelineMetrics) -> None:
        self.metrics = metrics
        self.begun = 0.0

    def __enter__(self) -> None:
        self.begun = time.perf_counter()

    def __exit__(self, kind: Any, exc: BaseException | None, trace: Any) -> None:
        self.metrics.ended(self.begun, "ok" if exc is None else "error")


def pipeline_metrics(pipeline: str, route: str = "") -> PipelineMetrics | None:
    """A driver's recorder, or None with metrics off."""
    return PipelineMetrics(pipeline, route) if enabled() else None

"""The capacity model: what a stage's profile says one replica serves, and how many replicas
of how many CPUs a load needs. Pure arithmetic on literal inputs; the capacity pass
(`passes.capacity`) applies it to a graph.

A stage's work per pipeline request, on a replica of `t` CPUs, is

    work_ms(t) = sum over its methods m of  calls_m * per_item_ms_m(b_m) * speed_m(t)

where `calls_m` is how often a request calls m (profiled calls / payloads), `per_item_ms_m(b)`
the profiled per-item time of m at batch size `b_m` on one CPU (the largest profiled batch
within its `max_batch_size`, unless a smaller one is `SMALLER_BATCH_GAIN` cheaper per item: a
stage kept busy fills its batches) and `speed_m(t)` the time of that batch on `t` CPUs over
its time on one (the threads sweep), all times `SERVED_WORK_FACTOR`: served, a stage shares
its CPUs with Serve's machinery (its replica's event loop, the proxy, the controller, the
caller) and ran that much slower than profiled alone (fitted: the flagship planned into two
driver replicas of one CPU, 31 req/s against 47 ms of profiled encoder work a request, two
batches at once). One replica serves `1000 / work_ms(t)` requests a second.

A load of `rps` at utilisation `u` needs, for each thread count `t`, `n(t) = ceil(rps / (u *
1000 / work_ms(t)))` replicas; the sizing is the `t` with the fewest CPUs `n(t) * t` (fewer
replicas on a tie). Planning for the most throughput, the largest load that fits is found by
bisection, and the CPUs it leaves go to the slowest stage (`grown`): a thread more per
replica when that serves at least `THREAD_PREFERENCE` of what a replica more would.

Serve's own work is not in a stage's profile: every pipeline request costs the caller and the
driver `REQUEST_CPU_MS`, and every call of a stage served as a deployment of its own
`CALL_CPU_MS` (a map's elements each: on Serve they travel in chunks, but each element still
goes through the driver's and the replica's call machinery and its result is serialised), the
driver doing `DRIVER_SHARE` of it. Both were fitted on the 2-core machine of
`benchmarks/bench_capacity.py` (Ray 2.60, `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, handle calls, the
load generator on the same machine): the diamond fused into one driver replica (1,730 to
1,765 req/s in quiet rounds: no call leaves the driver, so a request costs 1.15 ms of CPU, at
most 0.52 ms of it the driver's, as two driver replicas served no more), and the flagship's 17
encoder calls a request (25 req/s: 46 ms of encoder work and about 32 ms of Serve's, with the
map in 4, 8 or 1 chunks alike). The machine is shared, and its figures moved by 1.5x between
runs: these are the model's least certain numbers. So
the CPUs bound the pipeline too: `cpus * 1000 / (sum of work_ms(1) + overhead_ms)`.

A batched method's wait is planned too (`MethodBatch.planned_wait`): its declared
`batch_wait_timeout_s`, cut to the time its planned batch's other calls take to arrive at one
replica at the planned load. A longer wait fills no larger batch there (the batcher sends a
full batch at once, and while its slots are busy calls keep joining the next batch,
`executors.batcher`), and below that load a lone call would only wait longer.

A request's p99 in a stage is modelled as an M/M/1 queue's: `call_ms * ln(100) / (1 - u)`,
plus the batch wait, where `call_ms` is a call of the batch the load fills (at low load a
batched stage runs small batches); the pipeline's p99 is the sum of its stages' along its
heaviest chain of calls (`critical_p99`: parallel branches count once; still an upper bound,
as every stage on the chain is taken at its own p99).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from .profile import StageProfile

REQUEST_CPU_MS = 1.15      # the caller's and the driver's CPU per pipeline request
CALL_CPU_MS = 1.9          # CPU per call of a stage served on its own (a map's: per element)
DRIVER_SHARE = 0.45        # the driver's part of both
SERVED_WORK_FACTOR = 1.35  # a stage's work served, over its profiled time alone
TARGET_UTILISATION = 0.8   # a target's stages are sized to run at most this busy
P99_FACTOR = math.log(100)  # an M/M/1 response time's 99th percentile over its mean
MAX_UTILISATION = 0.95     # the queueing model is not read above this
THREAD_PREFERENCE = 0.9    # a thread more over a replica more when it serves this much
SMALLER_BATCH_GAIN = 0.05  # a smaller batch is planned when this much cheaper per item
CONCURRENT_BATCHES = 2     # batches a planned replica runs at once (the next one starts
#                            while the replica answers the last one's callers)


@dataclass(frozen=True)
class MethodBatch:
    """One `sg.batch` method of a stage as planned: its batch `size`, its `calls` per
    pipeline request, its declared batch wait and the wait planned (`planned_wait`)."""

    method: str | None
    size: int
    calls: float
    declared_ms: float
    wait_ms: float

    def planned_wait(self, rps: float, replicas: int) -> MethodBatch:
        """This batch with the wait shortened to the time its batch takes to arrive at one of
        `replicas` at `rps` (`(size - 1) / items a second`): at that load a longer wait buys
        no larger batch (the batch goes when full), and below it a lone call would wait
        longer for nothing. Never longer than declared."""
        rate = rps * self.calls / max(replicas, 1)
        if self.size <= 1 or rate <= 0:
            return replace(self, wait_ms=self.declared_ms)
        fill = round((self.size - 1) / rate * 1000.0, 3)
        return replace(self, wait_ms=min(self.declared_ms, fill))


@dataclass(frozen=True)
class StageLoad:
    """One deployment's work per pipeline request, from its profile (see the module
    docstring): `work_ms[t - 1]` on a replica of `t` CPUs; `call_ms[t - 1]` one call's
    service time (its slowest method, at its batch); `calls` per request; `batch` the items
    per call the work assumes (the largest method's); `wait_ms` its batch wait (its
    methods' longest, `batches`); `batch_ms`
    its most called method's profiled calls by batch size, on one CPU."""

    stage: str
    calls: float
    work_ms: tuple[float, ...]
    call_ms: tuple[float, ...]
    batch: int = 1
    batch_ms: tuple[tuple[int, float], ...] = ((1, 0.0),)  # (size, ms) on one CPU
    batches: tuple[MethodBatch, ...] = ()  # each `sg.batch` method's planned batch

    @property
    def wait_ms(self) -> float:
        """The batch wait of a call: its batched methods' longest (0 when none is)."""
        return max((each.wait_ms for each in self.batches), default=0.0)

    def waiting(self, rps: float, replicas: int) -> StageLoad:
        """This load with its batch waits planned for `rps` on `replicas`
        (`MethodBatch.planned_wait`)."""
        if not self.batches:
            return self
        return replace(self, batches=tuple(each.planned_wait(rps, replicas)
                                           for each in self.batches))

    @property
    def max_threads(self) -> int:
        return len(self.work_ms)

    def work(self, threads: int) -> float:
        return self.work_ms[min(threads, self.max_threads) - 1]

    def replica_rps(self, threads: int) -> float:
        """Pipeline requests a second one replica of `threads` CPUs serves."""
        return 1000.0 / max(self.work(threads), 1e-9)

    def call_at(self, items_per_s: float, threads: int) -> tuple[int, float]:
        """(batch size, ms) of one call at a replica receiving `items_per_s`: the batch that
        fills while the previous call and the batch wait run (a fixed point), at most the
        batch the work assumes; the time from the profiled batch at or below that size."""
        ratio = self.call_ms[min(threads, self.max_threads) - 1] / max(self.call_ms[0], 1e-9)
        size = 1
        for _ in range(16):
            fitting = [(b, ms) for b, ms in self.batch_ms if b <= size] or self.batch_ms[:1]
            known, known_ms = max(fitting)
            took = known_ms / known * size * ratio
            grown = min(self.batch, max(1, math.ceil(items_per_s * (took + self.wait_ms)
                                                       / 1000 - 1e-9)))
            if grown == size:
                break
            size = grown
        return size, took

    def p99_ms(self, threads: int, replicas: int, rps: float) -> float:
        """A request's p99 in this stage at `rps`: its batch wait (when batched) and an
        M/M/1 queue's p99 of calls of the batch the load fills (see the module docstring)."""
        busy = min(rps / (replicas * self.replica_rps(threads)), MAX_UTILISATION)
        _, took = self.call_at(rps * self.calls / replicas, threads)
        return (self.wait_ms if self.batch > 1 else 0.0) + took * P99_FACTOR / (1.0 - busy)


@dataclass(frozen=True)
class Sizing:
    """Replicas of a stage and the CPUs (threads) each reserves. A `light` stage (one replica
    of one thread serves the load, little work, unbatched) reserves none: its work, like the
    driver's, is counted in the CPUs' bound, and it stays one replica that the fuse pass may
    run in the driver."""

    replicas: int
    threads: int
    light: bool = False

    @property
    def cpus(self) -> int:
        return 0 if self.light else self.replicas * self.threads


def stage_load(stage: str, methods: Sequence[StageProfile], payloads: int,
               max_batch: Mapping[str | None, int], wait_ms: Mapping[str | None, float]
               ) -> StageLoad:
    """The load of a deployment's profiled `methods` (those some payload called);
    `max_batch` and `wait_ms` by method name for its `sg.batch` methods."""
    threads = max(len(method.threads_ms) for method in methods) or 1
    work = [0.0] * threads
    call = [0.0] * threads
    calls, batch = 0.0, 1
    sizes_of: list[MethodBatch] = []
    for method in methods:
        size, per_item, median = batch_at(method, max_batch.get(method.method, 1))
        per_request = method.calls / payloads
        if method.method in max_batch:
            declared = wait_ms.get(method.method, 0.0)
            sizes_of.append(MethodBatch(method.method, size, per_request, declared, declared))
        calls += per_request
        batch = max(batch, size)
        for index in range(threads):
            ratio = speed(method, index + 1)
            work[index] += per_request * per_item * ratio * SERVED_WORK_FACTOR
            call[index] = max(call[index], median * ratio * SERVED_WORK_FACTOR)
    busiest = max(methods, key=lambda method: method.calls)
    sizes = tuple((t.batch_size, t.median_ms * SERVED_WORK_FACTOR) for t in busiest.service_ms
                  if t.batch_size <= max(batch, 1))
    return StageLoad(stage, calls, tuple(work), tuple(call), batch, sizes or ((1, 0.0),),
                     tuple(sizes_of))


def batch_at(method: StageProfile, max_batch: int) -> tuple[int, float, float]:
    """(batch size, per-item ms, median ms) of the batch planned within `max_batch`: the
    largest profiled one, unless a smaller one costs at least `SMALLER_BATCH_GAIN` less per
    item (a batch past the model's best size only waits longer)."""
    fitting = [t for t in method.service_ms if t.batch_size <= max_batch] or method.service_ms[:1]
    timing = max(fitting, key=lambda t: t.batch_size)
    cheaper = [t for t in fitting
               if t.per_item_ms <= (1 - SMALLER_BATCH_GAIN) * timing.per_item_ms]
    if cheaper:
        timing = min(cheaper, key=lambda t: (t.per_item_ms, -t.batch_size))
    return timing.batch_size, timing.per_item_ms, timing.median_ms


def speed(method: StageProfile, threads: int) -> float:
    """A call's time on `threads` CPUs over its time on one (1.0 when not swept)."""
    swept = {t.threads: t.median_ms for t in method.threads_ms}
    if 1 not in swept or swept[1] <= 0:
        return 1.0
    known = max(count for count in swept if count <= threads)
    return swept[known] / swept[1]


def size_stage(load: StageLoad, rps: float, utilisation: float,
               max_threads: int | None = None) -> Sizing:
    """The fewest CPUs serving `rps` at `utilisation` (fewer replicas on a tie: each replica
    is a process of Serve's machinery, and a map over it one chunk, a call, more)."""
    best: Sizing | None = None
    top = load.max_threads if max_threads is None else min(load.max_threads, max_threads)
    for threads in range(1, max(top, 1) + 1):
        needed = rps / (utilisation * load.replica_rps(threads))
        sizing = Sizing(max(1, math.ceil(needed - 1e-9)), threads)
        if best is None or sizing.cpus <= best.cpus:
            best = sizing
    assert best is not None
    return best


def grown(load: StageLoad, now: Sizing, spare: float) -> Sizing | None:
    """`now` one step larger within `spare` CPUs: a thread more per replica when the profile
    says it serves at least `THREAD_PREFERENCE` of what a replica more would (a replica
    more is a process of Serve's machinery more, which the profile does not see), else a
    replica more; None when neither fits."""
    replica = Sizing(now.replicas + 1, now.threads)
    thread = Sizing(now.replicas, now.threads + 1)
    fits = {step for step in (replica, thread) if step.cpus - now.cpus <= spare + 1e-9}
    if now.threads >= load.max_threads:
        fits.discard(thread)
    if thread in fits and (replica not in fits or thread.replicas * load.replica_rps(
            thread.threads) >= THREAD_PREFERENCE * replica.replicas * load.replica_rps(
            replica.threads)):
        return thread
    return replica if replica in fits else None


def overhead_ms(hops: float) -> float:
    """Serve's CPU per pipeline request making `hops` calls to deployments."""
    return REQUEST_CPU_MS + CALL_CPU_MS * hops


def driver_ms(hops: float, fused_work_ms: float) -> float:
    """The driver's CPU per request: its share of Serve's work and the stages run in it."""
    return DRIVER_SHARE * overhead_ms(hops) + fused_work_ms


def driver_load(fused: Sequence[StageLoad], hops: float) -> StageLoad:
    """The driver's load when the `fused` stages run in it: a request's share of Serve's work
    (`hops` calls to deployments of their own) and the fused stages' work, on `t` CPUs."""
    threads = max((load.max_threads for load in fused), default=1)
    work = tuple(driver_ms(hops, sum(load.work(count) for load in fused))
                 for count in range(1, threads + 1))
    return StageLoad("driver", 1.0, work, work)


def cpu_bound_rps(cpus: float, loads: Sequence[StageLoad], hops: float) -> float:
    """Requests a second the CPUs allow: every stage's one-CPU work and Serve's own."""
    total = sum(load.work(1) for load in loads) + overhead_ms(hops)
    return cpus * 1000.0 / total


def most_rps(fits: Callable[[float], bool], upper: float, steps: int = 40) -> float:
    """The largest load `fits` accepts, by bisection between 0 and `upper`."""
    low, high = 0.0, upper
    for _ in range(steps):
        middle = (low + high) / 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low

"""`sg.profile`: each stage's service time against batch size, and its memory, on this machine.

The first half of capacity planning (issue 17): what one replica of each stage costs, measured
in-process, so a later pass can size replicas for a target load. How it works:

1. Record: every payload runs once through the local executor with a trace
   (`LocalExecutor.atrace`); each call node's span holds the arguments its stage received, and a
   map's span the elements it mapped over (its other arguments are decoded from the trace's
   values). A payload whose request fails stops the profile: it says which one.
2. Replay: each (stage, method) gets a fresh instance (`build_instances`, as the local
   executor builds one) and is called directly, without the scheduler: its recorded arguments
   in turn, a sync method inline, an async one awaited, a stream read to its end. An
   `sg.batch` method is called on lists built by repeating the recorded single inputs, at
   batch sizes 1, 2, 4, ... up to its `max_batch_size` (that size itself last, when it is not
   a power of two); any other method at batch size 1.
3. Memory: before its timings, each stage's largest batch runs once under `tracemalloc`; the
   peak of the Python allocations made during that call (above what was allocated before it)
   is `peak_memory_bytes`. It counts what Python's allocators see (numpy included), not a GPU's
   memory nor native libraries' own allocators. That call also warms the stage up.

Time is bounded: `budget_s` is shared evenly by the stages that were called, and within a
stage by its batch sizes; a timing loop stops when its share is spent or after `MAX_SAMPLES`
calls, and always takes at least one sample (so a tiny budget still gives a median of one).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import platform
import shutil
import statistics
import subprocess
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..compiler import CompiledPipeline, as_plan
from ..dag import BatchSpec, Graph, batch_spec
from ..errors import PipelineError, StageError
from ..executors.local import LocalExecutor, build_instances
from .cluster import local_gpu_memory

MAX_SAMPLES = 1000  # calls timed at most per batch size, however much budget is left
Recorded = tuple[tuple[Any, ...], dict[str, Any]]  # one call's positional and keyword args
Progress = Callable[[str], None]


class BatchTiming(BaseModel):
    """Service time of one call at one batch size: the median over `samples` calls."""

    model_config = ConfigDict(frozen=True)

    batch_size: int
    median_ms: float
    per_item_ms: float
    samples: int


class StageProfile(BaseModel):
    """One method of one stage (`method` None: a function stage). `calls`: how many recorded
    calls were replayed; `service_ms` is empty when no payload called it (an arm not taken)."""

    model_config = ConfigDict(frozen=True)

    stage: str
    method: str | None
    calls: int
    service_ms: list[BatchTiming]
    peak_memory_bytes: int

    @property
    def label(self) -> str:
        return self.stage if self.method is None else f"{self.stage}.{self.method}"

    def summary(self) -> str:
        """One line: `Scorer.score: 4 calls; batch 1 0.012 ms, 8 0.003 ms/item; peak 1.2 KiB`."""
        if not self.service_ms:
            return f"{self.label}: not called by any payload"
        times = ", ".join(f"{t.batch_size} {t.per_item_ms:.3g} ms/item" if t.batch_size > 1
                          else f"{t.batch_size} {t.median_ms:.3g} ms" for t in self.service_ms)
        return (f"{self.label}: {self.calls} call{'s' if self.calls != 1 else ''}; batch "
                f"{times}; peak {self.peak_memory_bytes / 1024:.1f} KiB")


class Machine(BaseModel):
    """Where the profile was measured. `memory_bytes` from /proc/meminfo (None elsewhere);
    `gpus` the NVIDIA GPUs `nvidia-smi` lists (limited by CUDA_VISIBLE_DEVICES when set),
    `gpu_memory_bytes` the first one's memory."""

    model_config = ConfigDict(frozen=True)

    cpus: int
    platform: str
    python: str
    memory_bytes: int | None = None
    gpus: int = 0
    gpu_memory_bytes: int | None = None

    @classmethod
    def here(cls) -> Machine:
        gpus = _gpu_count()
        return cls(cpus=os.cpu_count() or 1, platform=platform.platform(),
                   python=platform.python_version(), memory_bytes=_total_memory(),
                   gpus=gpus, gpu_memory_bytes=local_gpu_memory() if gpus else None)


class Profile(BaseModel):
    """What `sg.profile` measured: a `StageProfile` per called method, in schedule order."""

    model_config = ConfigDict(frozen=True)

    pipeline: str
    machine: Machine
    payloads: int
    budget_s: float
    stages: list[StageProfile]

    def stage(self, label: str) -> StageProfile:
        """The profile of `Stage.method` (or a function stage's name)."""
        for stage in self.stages:
            if stage.label == label:
                return stage
        raise KeyError(f"no stage {label!r}; profiled: "
                       f"{', '.join(s.label for s in self.stages)}")


def profile(graph_or_plan: Graph | CompiledPipeline, payloads: Iterable[Any], *,
            budget_s: float = 30.0, progress: Progress | None = None) -> Profile:
    """Measure each stage of the pipeline on this machine, in-process, with the inputs that
    `payloads` (request bodies, as `run_local` takes them) give it; see the module docstring.
    `progress` is called with a line as each stage's measurement starts. Blocking: it runs its
    own event loop, so it refuses to run inside a running one."""
    if budget_s <= 0:
        raise PipelineError(f"profile budget_s must be > 0, got {budget_s}")
    bodies = list(payloads)
    if not bodies:
        raise PipelineError("profile needs at least one payload: the stages are measured on "
                            "the inputs the payloads give them")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_profile(as_plan(graph_or_plan), bodies, budget_s, progress))
    raise PipelineError("sg.profile() blocks, and an event loop is running here: call it "
                        "from a thread without one")


async def _profile(plan: CompiledPipeline, payloads: list[Any], budget_s: float,
                   progress: Progress | None) -> Profile:
    recorded = await recorded_calls(plan, payloads)
    called = [key for key, calls in recorded.items() if calls]
    share = budget_s / max(1, len(called))
    stages = []
    for (stage, method), calls in recorded.items():
        if not calls:
            stages.append(StageProfile(stage=stage, method=method, calls=0, service_ms=[],
                                       peak_memory_bytes=0))
            continue
        if progress is not None:
            label = stage if method is None else f"{stage}.{method}"
            plural = "s" if len(calls) != 1 else ""
            progress(f"profiling {label} ({called.index((stage, method)) + 1}/{len(called)}):"
                     f" {len(calls)} recorded call{plural}, up to {share:.3g} s")
        stages.append(await _profile_stage(plan, stage, method, calls, share))
    return Profile(pipeline=plan.name, machine=Machine.here(), payloads=len(payloads),
                   budget_s=budget_s, stages=stages)


async def recorded_calls(plan: CompiledPipeline, payloads: Sequence[Any]
                         ) -> dict[tuple[str, str | None], list[Recorded]]:
    """(stage, method) -> the arguments of each of its calls the payloads made, every call
    node and map of the plan listed (in schedule order) even if no payload reached it."""
    nodes = {node.id: node for node in plan.nodes}
    found: dict[tuple[str, str | None], list[Recorded]] = {
        (node.stage, node.method): [] for node in plan.nodes
        if node.op in ("call", "map") and node.stage is not None}
    executor = LocalExecutor(plan)
    for index, payload in enumerate(payloads, 1):
        trace = await executor.atrace(payload)
        if trace.error is not None:
            raise PipelineError(f"payload {index} failed, so it cannot be profiled: "
                                f"{trace.error}") from trace.error
        values = {span.node: span.output for span in trace.spans}
        for span in trace.spans:
            node = nodes[span.node]
            if node.stage is None or node.op not in ("call", "map"):
                continue
            calls = found[(node.stage, node.method)]
            if node.op == "call":
                calls.append((tuple(span.args), dict(span.kwargs)))
                continue
            rest = tuple(plan.decode(template, values) for template in node.args[1:])
            kwargs = {name: plan.decode(t, values) for name, t in node.kwargs.items()}
            calls.extend(((item, *rest), kwargs) for item in span.args[0])
    return found


def batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to `max_batch_size`, which ends the list even when not a power of 2."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch_size:
        sizes.append(sizes[-1] * 2)
    return sizes if sizes[-1] == max_batch_size else [*sizes, max_batch_size]


async def _profile_stage(plan: CompiledPipeline, stage: str, method: str | None,
                         calls: list[Recorded], share_s: float) -> StageProfile:
    deadline = time.perf_counter() + share_s
    instance = build_instances(plan, [plan.stage(stage)])[stage]
    fn = instance if method is None else getattr(instance, method)
    spec = batch_spec(getattr(fn, "__func__", fn))
    sizes = [1] if spec is None else batch_sizes(spec.max_batch_size)

    async def call(batch: list[Recorded]) -> None:
        try:
            await _invoke(fn, spec, batch)
        except Exception as exc:
            raise StageError(stage, f"replaying a recorded call failed while profiling: {exc}",
                             site=plan.stage(stage).site, error_type=type(exc).__name__
                             ) from exc

    peak = await _peak_memory(call, _batch(calls, 0, sizes[-1]))
    timings = []
    for position, size in enumerate(sizes):
        until = time.perf_counter() + (deadline - time.perf_counter()) / (len(sizes) - position)
        timings.append(await _timed(call, calls, size, until))
    return StageProfile(stage=stage, method=method, calls=len(calls), service_ms=timings,
                        peak_memory_bytes=peak)


def _batch(calls: list[Recorded], start: int, size: int) -> list[Recorded]:
    """`size` recorded calls from `start` on, the list repeated as often as needed."""
    return [calls[(start + offset) % len(calls)] for offset in range(size)]


async def _invoke(fn: Callable[..., Any], spec: BatchSpec | None, batch: list[Recorded]
                  ) -> None:
    """One call of the stage: a batched method on a list per argument (keyword arguments
    after the positional ones, as the local batcher passes them), any other on one call's."""
    if spec is None:
        args, kwargs = batch[0]
        result = fn(*args, **kwargs)
    else:
        rows = [(*args, *kwargs.values()) for args, kwargs in batch]
        result = fn(*(list(column) for column in zip(*rows)))
    if inspect.isawaitable(result):
        await result
    elif inspect.isasyncgen(result):
        async for _ in result:
            pass
    elif inspect.isgenerator(result):
        for _ in result:
            pass


async def _peak_memory(call: Callable[[list[Recorded]], Awaitable[None]],
                       batch: list[Recorded]) -> int:
    """Bytes Python allocated at the peak of one call, above what was allocated before it."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        await call(batch)
        return max(0, tracemalloc.get_traced_memory()[1] - before)
    finally:
        if not tracing:
            tracemalloc.stop()


async def _timed(call: Callable[[list[Recorded]], Awaitable[None]], calls: list[Recorded],
                 size: int, until: float) -> BatchTiming:
    """Calls of `size` items until `until` (at least one, at most MAX_SAMPLES); the median."""
    samples: list[float] = []
    while not samples or (time.perf_counter() < until and len(samples) < MAX_SAMPLES):
        batch = _batch(calls, len(samples) * size, size)
        began = time.perf_counter()
        await call(batch)
        samples.append((time.perf_counter() - began) * 1000)
    median = statistics.median(samples)
    return BatchTiming(batch_size=size, median_ms=median, per_item_ms=median / size,
                       samples=len(samples))


def _total_memory() -> int | None:
    """This machine's memory in bytes, from /proc/meminfo (Linux); None where unreadable."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gpu_count() -> int:
    """NVIDIA GPUs `nvidia-smi -L` lists, no more than CUDA_VISIBLE_DEVICES names when set."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return 0
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                timeout=10, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return 0
    count = sum(1 for line in listed.splitlines() if line.startswith("GPU "))
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip()]))
    return count

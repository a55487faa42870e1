"""`sg.profile`: each stage's service time against batch size and threads, and its memory.

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
   memory nor native libraries' own allocators. That call also warms the stage up. On a
   machine with a GPU, `gpu_memory_bytes` is what this process's GPU memory grew by from
   before the stage was built to after that call (`cluster.gpu_memory_in_use`: nvidia-smi's
   figure for this process, which counts torch's cache and ONNX Runtime's arena, else torch's
   peak reserved memory). Stages are built one after another in one process, so only the
   first GPU stage's figure includes the CUDA context a replica of its own also pays.

4. Threads: the batch sizes above are timed on a stage built with one CPU; then the largest
   batch is timed on that stage and on stages built afresh with 2, 3, ... CPUs, up to this
   machine's, one call of each in turn, round after round (drift or a neighbour's load slows
   them alike), so the capacity pass can choose between more replicas and more threads. A
   stage learns its CPUs from `REPLICA_CPUS_ENV` while it is built and timed (`replica_cpus`),
   as a Ray replica learns them from Ray; torch's process-wide pool is sized for each call
   and given back as it was at the end.

The data (`Profile`, `StageProfile`, ...) lives in `compiler.profile`, which the compiler
reads; this module measures it. Time is bounded: `budget_s` is shared evenly by the stages
that were called; within a stage, half goes to its batch sizes and half to its thread counts
(all of it to batch sizes on one CPU), each shared evenly again; a timing loop stops when its
share is spent or after `MAX_SAMPLES` calls, and always takes at least one sample (so a tiny
budget still gives a median of one).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

from ..compiler import CompiledPipeline, as_plan
from ..compiler.profile import (
    REPLICA_CPUS_ENV,
    BatchTiming,
    Machine,
    Profile,
    StageProfile,
    ThreadTiming,
)
from ..dag import BatchSpec, Graph, batch_spec
from ..dag.app import App
from ..dag.site import user_site
from ..errors import BindError, PipelineError, StageError
from ..executors.local import LocalExecutor, build_instances
from .cluster import gpu_memory_in_use, local_gpu_memory, reset_gpu_peak

MAX_SAMPLES = 1000  # calls timed at most per batch size, however much budget is left
Recorded = tuple[tuple[Any, ...], dict[str, Any]]  # one call's positional and keyword args
Progress = Callable[[str], None]


def describe_machine(cpus: int | None = None) -> Machine:
    """This machine: its CPUs (`cpus` when this process was given fewer, as a Ray task on a
    node is), platform, memory and NVIDIA GPUs."""
    gpus = _gpu_count()
    return Machine(cpus=cpus or os.cpu_count() or 1, platform=platform.platform(),
                   python=platform.python_version(), memory_bytes=_total_memory(),
                   gpus=gpus, gpu_memory_bytes=local_gpu_memory() if gpus else None)


def profile(graph_or_plan: Graph | CompiledPipeline, payloads: Iterable[Any], *,
            budget_s: float = 30.0, progress: Progress | None = None,
            address: str | None = None, cpus: int | None = None) -> Profile:
    """Measure each stage of the pipeline on this machine, in-process, with the inputs that
    `payloads` (request bodies, as `run_local` takes them) give it; see the module docstring.
    `progress` is called with a line as each stage's measurement starts. With `address`, the
    measuring runs as a Ray task holding `cpus` CPUs (default: a whole node's, the largest)
    on a node of that cluster (`profile_remote`), and the profile describes that node.
    Blocking: it runs its own event loop, so it refuses to run inside a running one."""
    if isinstance(graph_or_plan, App):
        raise BindError(f"sg.profile measures one graph, and the app {graph_or_plan.name!r} "
                        f"holds {len(graph_or_plan.graphs)}", site=user_site(),
                        hint=f"profile each of its graphs: sg.profile(app.graphs["
                        f"{next(iter(graph_or_plan.graphs))!r}], payloads) (CLI: --graph NAME)")
    if budget_s <= 0:
        raise PipelineError(f"profile budget_s must be > 0, got {budget_s}")
    if cpus is not None and cpus < 1:
        raise PipelineError(f"profile cpus must be >= 1, got {cpus}")
    bodies = list(payloads)
    if not bodies:
        raise PipelineError("profile needs at least one payload: the stages are measured on "
                            "the inputs the payloads give them")
    if address is not None:
        from .profile_remote import profile_on_cluster

        return profile_on_cluster(as_plan(graph_or_plan), bodies, budget_s=budget_s,
                                  address=address, cpus=cpus, progress=progress,
                                  measure=profile)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_profile(as_plan(graph_or_plan), bodies, budget_s, progress, cpus))
    raise PipelineError("sg.profile() blocks, and an event loop is running here: call it "
                        "from a thread without one")


async def _profile(plan: CompiledPipeline, payloads: list[Any], budget_s: float,
                   progress: Progress | None, cpus: int | None = None) -> Profile:
    widths: dict[tuple[str, str | None], list[int]] = {}
    recorded = await recorded_calls(plan, payloads, widths)
    called = [key for key, calls in recorded.items() if calls]
    share = budget_s / max(1, len(called))
    machine = describe_machine(cpus)
    stages = []
    with restored_torch_threads():
        for (stage, method), calls in recorded.items():
            if not calls:
                stages.append(StageProfile(stage=stage, method=method, calls=0, service_ms=[],
                                           peak_memory_bytes=0))
                continue
            if progress is not None:
                label = stage if method is None else f"{stage}.{method}"
                plural = "s" if len(calls) != 1 else ""
                progress(f"profiling {label} ({called.index((stage, method)) + 1}/"
                         f"{len(called)}): {len(calls)} recorded call{plural}, threads "
                         f"1..{machine.cpus}, up to {share:.3g} s")
            measured = await _profile_stage(plan, stage, method, calls, share, machine.cpus,
                                            gpus=machine.gpus > 0)
            mapped = widths.get((stage, method), [])
            stages.append(measured.model_copy(update={"maps": len(mapped),
                                                      "map_calls": sum(mapped)}))
    return Profile(pipeline=plan.name, machine=machine, payloads=len(payloads),
                   budget_s=budget_s, stages=stages)


@contextlib.contextmanager
def replica_cpus(count: int) -> Iterator[None]:
    """Within: the stage built and timed here has `count` CPUs (`REPLICA_CPUS_ENV`, which
    the model helpers read as a Ray replica reads the CPUs Ray assigned it)."""
    before = os.environ.get(REPLICA_CPUS_ENV)
    os.environ[REPLICA_CPUS_ENV] = str(count)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(REPLICA_CPUS_ENV, None)
        else:
            os.environ[REPLICA_CPUS_ENV] = before


@contextlib.contextmanager
def restored_torch_threads() -> Iterator[None]:
    """Torch's thread pool belongs to the process: stages built for the threads sweep size it
    (`torch.set_num_threads`); give it back as it was (torch's default, every CPU, when torch
    was first imported during the profile)."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else os.cpu_count() or 1
    try:
        yield
    finally:
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(before)


async def recorded_calls(plan: CompiledPipeline, payloads: Sequence[Any],
                         widths: dict[tuple[str, str | None], list[int]] | None = None
                         ) -> dict[tuple[str, str | None], list[Recorded]]:
    """(stage, method) -> the arguments of each of its calls the payloads made, every call
    node and map of the plan listed (in schedule order) even if no payload reached it.
    `widths`, when given, gets each map's number of elements, by the (stage, method) it
    maps over: how a stage's calls split into call nodes' and maps' (`StageProfile.maps`)."""
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
            if widths is not None:
                widths.setdefault((node.stage, node.method), []).append(len(span.args[0]))
    return found


def batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to `max_batch_size`, which ends the list even when not a power of 2."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch_size:
        sizes.append(sizes[-1] * 2)
    return sizes if sizes[-1] == max_batch_size else [*sizes, max_batch_size]


async def _profile_stage(plan: CompiledPipeline, stage: str, method: str | None,
                         calls: list[Recorded], share_s: float, cpus: int, gpus: bool = False
                         ) -> StageProfile:
    """Batch sizes on one CPU (half the share when there are threads to sweep), then the
    largest batch on 1, 2, ... `cpus` CPUs, a stage built afresh for each count. On a machine
    with `gpus`, the GPU memory this process gained building the stage and running its
    largest batch once."""
    began = time.perf_counter()
    deadline = began + share_s
    batch_until = began + (share_s if cpus == 1 else share_s / 2)
    with replica_cpus(1):
        if gpus:
            reset_gpu_peak()
        before = gpu_memory_in_use() if gpus else None
        call, sizes = _caller(plan, stage, method)
        peak = await _peak_memory(call, _batch(calls, 0, sizes[-1]))
        after = gpu_memory_in_use() if gpus else None
        gpu = None if after is None else max(0, after - (before or 0))
        timings = []
        for position, size in enumerate(sizes):
            left = batch_until - time.perf_counter()
            timings.append(await _timed(call, calls, size,
                                        time.perf_counter() + left / (len(sizes) - position)))
    largest = timings[-1]
    threads = [ThreadTiming(threads=1, batch_size=largest.batch_size,
                            median_ms=largest.median_ms, samples=largest.samples)]
    if cpus > 1:
        callers = {1: call}
        for count in range(2, cpus + 1):
            with replica_cpus(count):
                callers[count], _ = _caller(plan, stage, method)
                await callers[count](_batch(calls, 0, largest.batch_size))  # warm up
        threads = await _sweep_threads(callers, calls, largest.batch_size, deadline)
    return StageProfile(stage=stage, method=method, calls=len(calls), service_ms=timings,
                        peak_memory_bytes=peak, gpu_memory_bytes=gpu, threads_ms=threads)


async def _sweep_threads(callers: dict[int, Callable[[list[Recorded]], Awaitable[None]]],
                         calls: list[Recorded], size: int, until: float) -> list[ThreadTiming]:
    """Calls of `size` items on each CPU count's stage in turn, round after round, until
    `until` (at least one round, at most MAX_SAMPLES): a machine that drifts, or is shared,
    slows every count alike, where timing one count after another would favour one. Torch's
    pool is the process's, so it is sized for each call's count."""
    samples: dict[int, list[float]] = {count: [] for count in callers}
    rounds = 0
    while not rounds or (time.perf_counter() < until and rounds < MAX_SAMPLES):
        for count, call in callers.items():
            torch = sys.modules.get("torch")
            if torch is not None:
                torch.set_num_threads(count)
            with replica_cpus(count):
                began = time.perf_counter()
                await call(_batch(calls, rounds * size, size))
                samples[count].append((time.perf_counter() - began) * 1000)
        rounds += 1
    return [ThreadTiming(threads=count, batch_size=size, median_ms=statistics.median(taken),
                         samples=len(taken)) for count, taken in samples.items()]


def _caller(plan: CompiledPipeline, stage: str, method: str | None
            ) -> tuple[Callable[[list[Recorded]], Awaitable[None]], list[int]]:
    """A fresh instance of the stage (built now, with the CPUs `replica_cpus` says), as a
    call on a batch of recorded calls; and the batch sizes to time it at."""
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

    return call, sizes


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

"""The capacity benchmark: what profile-planned compilation buys, in one run on this machine.

For the flagship (semantic search on the ONNX encoder, 17 texts a request, `flagship.py`) and
the diamond (`diamond.py`), each profiled in-process (`sg.profile`) and then served on one
embedded Ray, measured through the pipeline handle at concurrency 32 (rounds alternating
(a) and (b), each one's median round kept):

(a) the default plan (`sg.compile(graph)`: one replica of each stage, declared CPUs);
(b) the plan from the profile for the most throughput this machine allows
    (`sg.compile(graph, cluster=sg.ClusterSpec(cpus=<this machine's>), profile=p)`);
(c) the raw ceiling: for the flagship, the encoder's own path (no servegraph, no Serve) kept
    busy in its best thread layout (`bench_models.py` part c: unique texts), texts/s over 17
    texts a request; and, stricter, (c') the same on the flagship's own request texts as they
    are (the served requests' texts, which are shorter: each of part c's carries a number).
    For the diamond, whose stages do next to nothing, no Serve plan can approach its stages'
    own speed, so (c) is what one request costs Serve at the least: the four stage functions
    hand-fused into one Serve deployment (`diamond.hand_fused_app`), served in the same
    rounds; (d) is the stage functions awaited by plain asyncio in one process, for reference.

Printed: b/c (target >= 0.8), b/a (target >= 1.5), and (b)'s predicted throughput against its
measured one (within 25%). Then the batched encoder alone (`bench_models.py` part a's batched
graph, 32 concurrent single-text requests) served from its profile-planned plan, against the
best raw layout of part (c) (target >= 0.9x). Profiling and the raw ceilings run before Ray
starts, so nothing else competes for the CPUs then.

Run from anywhere: `python benchmarks/bench_capacity.py [--quick] [--pipeline diamond]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bench_spine import DIAMOND, DRAIN_SETTING, Workload, _log, load
from spine_report import THROUGHPUT_FLAG

CONCURRENCY = 32
PIPELINES = ("flagship", "diamond")
TEXTS_PER_REQUEST = 17  # the flagship's query and its 16 sample documents


@dataclass(frozen=True)
class Ceiling:
    """A raw ceiling: what it is, req/s (None: measured on Serve in the rounds), and how."""

    label: str
    rps: float | None
    how: str


@dataclass(frozen=True)
class Planned:
    """One pipeline's plans and its ceilings; the first ceiling is the targets' (c)."""

    pipeline: str
    default: Any        # CompiledPipeline
    planned: Any        # CompiledPipeline, profile-planned for the most throughput
    ceilings: list[Ceiling]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short loads and profiles")
    parser.add_argument("--duration", type=float)
    parser.add_argument("--rounds", type=int, help="rounds of (a) and (b), alternating")
    parser.add_argument("--budget-s", type=float, help="profiling budget per pipeline")
    parser.add_argument("--pipeline", choices=PIPELINES, action="append",
                        help="measure only this pipeline (repeatable; default: both)")
    parser.add_argument("--no-encoder", action="store_true",
                        help="skip the batched-encoder figure")
    args = parser.parse_args(argv)
    args.duration = args.duration or (4.0 if args.quick else 8.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.warmup = 1.0 if args.quick else 3.0
    args.budget_s = args.budget_s or (4.0 if args.quick else 12.0)
    args.pipeline = args.pipeline or list(PIPELINES)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault(THROUGHPUT_FLAG, "1")  # before Ray is imported
    os.environ.setdefault(DRAIN_SETTING, "1")
    plans = [prepare(name, args) for name in args.pipeline]
    encoder = None if args.no_encoder else prepare_encoder(args)
    import ray

    ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False)
    try:
        measured = asyncio.run(measure(plans, encoder, args))
    finally:
        ray.shutdown()
    for plan in plans:
        print(report(plan, measured[plan.pipeline]), end="\n\n")
    if encoder is not None:
        print(encoder_report(encoder, measured["encoder"]))
    return 0


def payloads(pipeline: str) -> list[Any]:
    if pipeline == "diamond":
        return [{"x": x} for x in range(8)]
    import flagship

    return [flagship.request(x) for x in range(len(flagship.QUERIES))]


def graph_of(pipeline: str) -> Any:
    import diamond
    import flagship

    return diamond.graph() if pipeline == "diamond" else flagship.graph()


def prepare(pipeline: str, args: argparse.Namespace) -> Planned:
    """Profile, plan, and measure the raw ceiling, all before Ray starts."""
    import servegraph as sg

    graph = graph_of(pipeline)
    _log(f"{pipeline}: profiling ({args.budget_s:g} s budget)")
    prof = sg.profile(graph, payloads(pipeline), budget_s=args.budget_s, progress=_log)
    for stage in prof.stages:
        _log(f"  {stage.summary()}")
    cluster = sg.ClusterSpec(cpus=os.cpu_count() or 1)
    planned = sg.compile(graph_of(pipeline), cluster=cluster, profile=prof)
    _log("planned:\n" + planned.explain())
    if pipeline == "diamond":
        ceilings = [Ceiling("(c) hand-fused Serve deployment", None,
                            "the four stages in one deployment, served in the same rounds"),
                    Ceiling("(d) plain asyncio, no Serve", diamond_ceiling(args.duration),
                            "the stage functions awaited in one process")]
    else:
        ceilings = [flagship_ceiling("(c) raw encoder ceiling", None, args.duration),
                    flagship_ceiling("(c') on the flagship's own texts", flagship_texts(),
                                     args.duration)]
    return Planned(pipeline, sg.compile(graph_of(pipeline)), planned, ceilings)


def flagship_texts() -> list[str]:
    """The texts the flagship's requests send, in order: each query, then its documents."""
    import flagship

    return [text for x in range(len(flagship.QUERIES))
            for text in (flagship.request(x)["query"], *flagship.request(x)["documents"])]


def flagship_ceiling(label: str, corpus: list[str] | None, duration: float) -> Ceiling:
    """`encoder_ceiling` over 17 texts a request."""
    texts, how = encoder_ceiling(duration, corpus)
    return Ceiling(label, texts / TEXTS_PER_REQUEST,
                   f"{how}, {texts:.0f} texts/s / {TEXTS_PER_REQUEST}")


def encoder_ceiling(duration: float, corpus: list[str] | None = None) -> tuple[float, str]:
    """The best of bench_models part (c)'s layouts at batch 32: texts/s and the layout (on
    part c's unique texts, or on `corpus` as it is)."""
    from bench_models import busy

    from servegraph.pipelines.search import OnnxEncoder

    cpus = os.cpu_count() or 1
    layouts = [(cpus, 1), (1, cpus)] if cpus > 1 else [(1, 1)]
    best = (0.0, "")
    for threads, calls in layouts:
        _log(f"raw ceiling: batches of 32, {calls} call(s) of {threads} thread(s)")
        rate = busy(OnnxEncoder(threads=threads)._embed, 32, calls, duration, corpus)
        best = max(best, (rate, f"batches of 32, {calls} x {threads} thread(s)"))
    return best


def diamond_ceiling(duration: float) -> float:
    """Requests a second of the four stage functions awaited by 32 asyncio workers."""
    import diamond

    inc = diamond.Inc()

    async def call(request: dict[str, Any]) -> Any:
        return await diamond.run_asyncio(inc, request)

    async def measured() -> float:
        row = await load("asyncio", "diamond", call, CONCURRENCY, duration, 1.0, DIAMOND)
        return row.rps

    return asyncio.run(measured())


@dataclass(frozen=True)
class EncoderPlan:
    planned: Any
    best_texts: float
    layout: str


def prepare_encoder(args: argparse.Namespace) -> EncoderPlan:
    """bench_models part (a)'s batched encoder graph, profiled and planned; its raw best."""
    from bench_models import encoder_graph, texts

    import servegraph as sg

    _log("batched encoder: profiling")
    prof = sg.profile(encoder_graph(True), [text for text in texts()],
                      budget_s=args.budget_s, progress=_log)
    planned = sg.compile(encoder_graph(True), cluster=sg.ClusterSpec(cpus=os.cpu_count() or 1),
                         profile=prof)
    _log("planned:\n" + planned.explain())
    best, layout = encoder_ceiling(args.duration)
    return EncoderPlan(planned, best, layout)



def flagship_workload() -> Workload:
    import flagship

    return Workload(flagship.request, flagship.check)


async def measure(plans: list[Planned], encoder: EncoderPlan | None,
                  args: argparse.Namespace) -> dict[str, Any]:
    """(a) and (b) of each pipeline served in turn, `args.rounds` rounds in alternating order
    (this machine is shared and drifts: each contender's median round is kept), each
    deployed in a thread while this loop keeps the handles' routers running, loaded, and
    deleted."""
    results: dict[str, Any] = {}
    for plan in plans:
        workload = DIAMOND if plan.pipeline == "diamond" else flagship_workload()
        contenders = [("default", plan.default), ("planned", plan.planned)]
        if plan.pipeline == "diamond":
            contenders.append(("hand-fused", None))
        rows: dict[str, list[Any]] = {name: [] for name, _ in contenders}
        for number in range(args.rounds):
            for name, compiled in contenders[number % 2:] + contenders[:number % 2]:
                rows[name].append(await serve_and_load(plan.pipeline, name, compiled,
                                                       workload, args))
        results[plan.pipeline] = {name: median_row(found) for name, found in rows.items()}
    if encoder is not None:
        results["encoder"] = await measure_encoder(encoder, args)
    return results


def median_row(rows: list[Any]) -> Any:
    """The round whose throughput is the median (the lower of two middles)."""
    return sorted(rows, key=lambda row: row.rps)[(len(rows) - 1) // 2]


async def serve_and_load(pipeline: str, name: str, compiled: Any, workload: Workload,
                         args: argparse.Namespace) -> Any:
    from ray import serve

    import servegraph as sg

    app = f"{pipeline}-{name}"
    started = time.perf_counter()
    if compiled is None:  # the hand-fused diamond, the diamond's (c): Serve's own handle
        import diamond

        hand = await asyncio.to_thread(serve.run, diamond.hand_fused_app(), name=app,
                                       route_prefix=f"/{app}")
        call = hand.run.remote
    else:
        call = (await asyncio.to_thread(sg.serve, compiled, name=app,
                                        route_prefix=f"/{app}")).acall
    _log(f"{app} deployed in {time.perf_counter() - started:.1f} s")
    try:
        row = await load(name, pipeline, call, CONCURRENCY, args.duration,
                         args.warmup, workload)
    finally:
        await asyncio.to_thread(serve.delete, app)
    _log(f"{app}: {row.rps:.1f} req/s")
    return row


async def measure_encoder(encoder: EncoderPlan, args: argparse.Namespace) -> Any:
    from bench_models import load as load_texts
    from ray import serve

    import servegraph as sg

    handle = await asyncio.to_thread(sg.serve, encoder.planned, name="encoder-planned",
                                     route_prefix="/encoder-planned")
    call: Callable[[str], Awaitable[Any]] = handle.acall
    try:
        return await load_texts("batched, planned", "serve", call, args.duration, args.warmup)
    finally:
        await asyncio.to_thread(serve.delete, "encoder-planned")


def _verdict(value: float, floor: float) -> str:
    return "ok" if value >= floor else "MISSED"


def report(plan: Planned, rows: dict[str, Any]) -> str:
    default, planned = rows["default"], rows["planned"]
    ceilings = [replace(each, rps=rows["hand-fused"].rps) if each.rps is None else each
                for each in plan.ceilings]
    capacity = plan.planned.capacity
    predicted = capacity.capacity_rps
    lines = [f"servegraph capacity benchmark: {plan.pipeline}, handle, concurrency "
             f"{CONCURRENCY}, median of rounds, {THROUGHPUT_FLAG}="
             f"{os.environ[THROUGHPUT_FLAG]}, {os.cpu_count()} CPUs",
             f"{'contender':<36}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"]
    served = [("(a) default plan", default), ("(b) planned, most throughput", planned)]
    if "hand-fused" in rows:
        served.append((ceilings[0].label, rows["hand-fused"]))
    for label, row in served:
        lines.append(f"{label:<36}{row.rps:>10.1f}{row.p50_ms:>10.1f}{row.p99_ms:>10.1f}")
    lines += [f"{c.label:<36}{c.rps:>10.1f}   ({c.how})" for c in ceilings
              if not (c is ceilings[0] and "hand-fused" in rows)]
    lines += [f"{'(b) predicted':<36}{predicted:>10.1f}   (bottleneck: {capacity.bottleneck})",
              ""]
    error = planned.rps / predicted - 1
    lines += [
        f"{'b / c':<40}{planned.rps / ceilings[0].rps:>7.2f}x  target >= 0.8  "
        f"{_verdict(planned.rps / ceilings[0].rps, 0.8)}",
        *(f"{'b / ' + c.label.split()[0].strip('()'):<40}{planned.rps / c.rps:>7.2f}x  "
          f"(for reference)" for c in ceilings[1:]),
        f"{'b / a':<40}{planned.rps / default.rps:>7.2f}x  target >= 1.5  "
        f"{_verdict(planned.rps / default.rps, 1.5)}",
        f"{'b measured / predicted':<40}{planned.rps / predicted:>7.2f}x  target within 25%  "
        f"{'ok' if abs(error) <= 0.25 else 'MISSED'}",
        "planned: " + "; ".join(
            f"{s.name} {s.resources.replicas.start} x {s.resources.cpus:g} CPU"
            + (" (in the driver)" if s.fused_into else "") for s in plan.planned.deployments)
        + f"; driver {plan.planned.driver.resources.replicas.start} x "
          f"{plan.planned.driver.resources.cpus:g} CPU"]
    if capacity.layout:
        lines.append(f"layout: {capacity.layout}")
    return "\n".join(lines)


def encoder_report(encoder: EncoderPlan, row: Any) -> str:
    stage = encoder.planned.deployments[0]
    where = encoder.planned.driver if stage.fused_into else stage
    ratio = row.per_s / encoder.best_texts
    return "\n".join([
        "batched encoder on Serve, 32 concurrent single-text requests:",
        f"  planned {where.resources.replicas.start} x {where.resources.cpus:g} CPU"
        f"{' (in the driver)' if stage.fused_into else ''}: "
        f"{row.per_s:.0f} texts/s (p50 {row.p50_ms:.1f} ms)",
        f"  best raw layout ({encoder.layout}): {encoder.best_texts:.0f} texts/s",
        f"  served / raw {ratio:.2f}x  target >= 0.9  {_verdict(ratio, 0.9)}"])


if __name__ == "__main__":
    sys.exit(main())

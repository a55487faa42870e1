"""The fusion benchmark, in one run on one embedded Ray: each pipeline compiled with fusion,
compiled without, the best hand-written Serve composition and the same work hand-fused into
one deployment. req/s and p50/p99 at concurrency 32 through deployment handles, the median of
rounds, and the ratios the fusion issue targets.

- the diamond (inc -> x2, x3 -> add, `diamond.py`): four light stages, where hops dominate;
- the flagship, semantic search on the ONNX encoder (`flagship.py`): 17 texts embedded per
  request by a batched model stage, the ranker fused into the driver. One more contender
  compiles it with `fuse=True` on the encoder, so the whole pipeline is one deployment.

Every contender runs under `RAY_SERVE_THROUGHPUT_OPTIMIZED=1` (the runner's own default for
the Ray it starts), each deployed, measured and deleted in turn.
Run from anywhere: `python benchmarks/bench_fusion.py [--quick] [--pipeline diamond]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from bench_spine import DIAMOND, Call, Workload, _log, embedded_ray, load
from spine_report import THROUGHPUT_FLAG, Load, median_rounds

CONCURRENCY = 32
PIPELINES = ("diamond", "flagship")
Deploy = Callable[[str], Callable[[], Call]]  # app name -> the handle call


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short loads, 2 rounds")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--pipeline", choices=PIPELINES, action="append",
                        help="measure only this pipeline (repeatable; default: all)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 8.0)
    args.warmup = 1.0 if args.quick else 2.0
    args.pipeline = args.pipeline or list(PIPELINES)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with embedded_ray():
        loads = median_rounds(asyncio.run(rounds(args)))
    for pipeline in args.pipeline:
        print(report(pipeline, loads, args.rounds), end="\n\n")
    return 0


def contenders(pipeline: str) -> list[tuple[str, Deploy]]:
    """The pipeline's contenders; every application gets a name and route of its own."""
    from ray import serve

    import servegraph as sg

    def compiled(graph: Callable[[], sg.Graph], fuse: bool) -> Deploy:
        def deploy(name: str) -> Callable[[], Call]:
            plan = sg.compile(graph(), fuse=fuse)
            pipeline_handle = sg.serve(plan, name=name, route_prefix=f"/{name}")
            return lambda: pipeline_handle.acall
        return deploy

    def hand(app: Callable[[], Any]) -> Deploy:
        def deploy(name: str) -> Callable[[], Call]:
            handle = serve.run(app(), name=name, route_prefix=f"/{name}")
            return lambda: handle.run.remote
        return deploy

    if pipeline == "diamond":
        import diamond

        return [("fused", compiled(diamond.graph, True)),
                ("unfused", compiled(diamond.graph, False)),
                ("hand-written", hand(lambda: diamond.hand_app({"max_ongoing_requests": 1000}))),
                ("hand-fused", hand(diamond.hand_fused_app))]
    import flagship

    return [("fused", compiled(flagship.graph, True)),
            ("unfused", compiled(flagship.graph, False)),
            ("all fused", compiled(lambda: flagship.graph(True), True)),
            ("hand-written", hand(flagship.hand_app)),
            ("hand-fused", hand(flagship.hand_fused_app))]


def workload(pipeline: str) -> Workload:
    if pipeline == "diamond":
        return DIAMOND
    import flagship

    return Workload(flagship.request, flagship.check)


async def rounds(args: argparse.Namespace) -> list[Load]:
    """Contenders in a rotated order each round; deploy and delete in a thread while this
    loop keeps serving the handles' routers (see bench_spine.serve_rounds). Serve stops with
    Ray: the compiled contenders' handles live on `PipelineHandle`'s own loop, which
    `serve.shutdown_async` from this loop cannot close."""
    from ray import serve

    loads: list[Load] = []
    for pipeline in args.pipeline:
        deployers = contenders(pipeline)
        for index in range(args.rounds):
            shift = index % len(deployers)
            for name, deploy in deployers[shift:] + deployers[:shift]:
                started = time.perf_counter()
                app = f"{pipeline}-{name.replace(' ', '-')}"
                handle_call = await asyncio.to_thread(deploy, app)
                _log(f"round {index + 1}: {pipeline} {name} deployed in "
                     f"{time.perf_counter() - started:.1f} s")
                try:
                    row = await load(name, pipeline, handle_call(), CONCURRENCY,
                                     args.duration, args.warmup, workload(pipeline))
                finally:
                    await asyncio.to_thread(serve.delete, app)
                loads.append(replace(row, round=index))
    return loads


def report(pipeline: str, loads: list[Load], rounds_run: int) -> str:
    """The pipeline's table and ratios. The issue's targets are set on the diamond, where hops
    are all the work; on the flagship the model's time dominates, so its ratios are shown for
    information (fusion removes the same hops there, but they are a small share)."""
    by = {row.contender: row for row in loads if row.transport == pipeline}
    lines = [f"servegraph fusion benchmark: {pipeline}, handle, concurrency {CONCURRENCY}, "
             f"median of {rounds_run} rounds, {THROUGHPUT_FLAG}={os.environ[THROUGHPUT_FLAG]}, "
             f"{os.cpu_count()} CPUs",
             f"{'contender':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"]
    for name, row in by.items():
        lines.append(f"{name:<16}{row.rps:>10.1f}{row.p50_ms:>10.2f}{row.p99_ms:>10.2f}")
    fused, fused_by_hand = by["fused"], by["hand-fused"]
    targeted = pipeline == "diamond"
    checks = [
        ("fused / hand-fused throughput", fused.rps / fused_by_hand.rps, ">= 0.8", 0.8),
        ("fused / best hand-written throughput",
         fused.rps / max(by["hand-written"].rps, by["unfused"].rps), ">= 3", 3.0),
        ("hand-fused / fused p50 (fused p50 at most 1.5x)",
         fused_by_hand.p50_ms / fused.p50_ms, ">= 0.667", 1 / 1.5),
        ("fused / unfused throughput", fused.rps / by["unfused"].rps, "", None),
    ]
    if "all fused" in by:
        checks.append(("all fused / hand-fused throughput",
                       by["all fused"].rps / fused_by_hand.rps, "", None))
    lines.append("")
    for text, value, target, floor in checks:
        if floor is None or not targeted:
            lines.append(f"{text:<50}{value:>7.2f}x  (info)")
        else:
            verdict = "ok" if value >= floor else "MISSED"
            lines.append(f"{text:<50}{value:>7.2f}x  target {target}  {verdict}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

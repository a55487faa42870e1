"""The fusion benchmark: the diamond (inc -> x2, x3 -> add) on Ray Serve, in one run, as
compiled with fusion, compiled without, the best hand-written four-deployment composition and
the same work hand-fused into one deployment: req/s and p50 at concurrency 32 through
deployment handles, the median of rounds, and the ratios the fusion issue targets.

Every contender runs under `RAY_SERVE_THROUGHPUT_OPTIMIZED=1` (the runner's own default for
the Ray it starts), each deployed, measured and deleted in turn on one embedded Ray.
Run from anywhere: `python benchmarks/bench_fusion.py [--quick]`.
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

from bench_spine import DRAIN_SETTING, Call, _log, load
from spine_report import THROUGHPUT_FLAG, Load, median_rounds

CONCURRENCY = 32
Deploy = Callable[[], Callable[[], Call]]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short loads, 2 rounds")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=float)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 8.0)
    args.warmup = 1.0 if args.quick else 2.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault(THROUGHPUT_FLAG, "1")  # before Ray is imported
    os.environ.setdefault(DRAIN_SETTING, "1")
    import ray

    ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False)
    try:
        loads = median_rounds(asyncio.run(rounds(args)))
    finally:
        ray.shutdown()
    print(report(loads, args.rounds))
    return 0


def contenders() -> list[tuple[str, Deploy]]:
    import diamond
    from ray import serve

    import servegraph as sg

    def compiled(name: str, fuse: bool) -> Deploy:
        def deploy() -> Callable[[], Call]:
            plan = sg.compile(diamond.graph(), fuse=fuse)
            pipeline = sg.serve(plan, name=name, route_prefix=f"/{name}")
            return lambda: pipeline.remote
        return deploy

    def hand(name: str, app: Callable[[], Any]) -> Deploy:
        def deploy() -> Callable[[], Call]:
            handle = serve.run(app(), name=name, route_prefix=f"/{name}")
            return lambda: handle.run.remote
        return deploy

    return [("fused", compiled("fused", True)), ("unfused", compiled("unfused", False)),
            ("hand-written", hand("hand-written",
                                  lambda: diamond.hand_app({"max_ongoing_requests": 1000}))),
            ("hand-fused", hand("hand-fused", diamond.hand_fused_app))]


async def rounds(args: argparse.Namespace) -> list[Load]:
    """Contenders in a rotated order each round; deploy and delete in a thread while this
    loop keeps serving the handles' routers (see bench_spine.serve_rounds). Serve stops with
    Ray: the compiled contenders' handles live on `PipelineHandle`'s own loop, which
    `serve.shutdown_async` from this loop cannot close."""
    from ray import serve

    loads: list[Load] = []
    deployers = contenders()
    for index in range(args.rounds):
        shift = index % len(deployers)
        for name, deploy in deployers[shift:] + deployers[:shift]:
            started = time.perf_counter()
            handle_call = await asyncio.to_thread(deploy)
            _log(f"round {index + 1}: {name} deployed in "
                 f"{time.perf_counter() - started:.1f} s")
            try:
                row = await load(name, "handle", handle_call(), CONCURRENCY,
                                 args.duration, args.warmup)
            finally:
                await asyncio.to_thread(serve.delete, name)
            loads.append(replace(row, round=index))
    return loads


def report(loads: list[Load], rounds_run: int) -> str:
    by = {row.contender: row for row in loads}
    lines = [f"servegraph fusion benchmark: diamond, handle, concurrency {CONCURRENCY}, "
             f"median of {rounds_run} rounds, {THROUGHPUT_FLAG}={os.environ[THROUGHPUT_FLAG]}, "
             f"{os.cpu_count()} CPUs",
             f"{'contender':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"]
    for name in ("fused", "unfused", "hand-written", "hand-fused"):
        row = by[name]
        lines.append(f"{name:<16}{row.rps:>10.0f}{row.p50_ms:>10.2f}{row.p99_ms:>10.2f}")
    fused, fused_by_hand = by["fused"], by["hand-fused"]
    checks = [
        ("fused / hand-fused throughput", fused.rps / fused_by_hand.rps, ">= 0.8", 0.8),
        ("fused / best hand-written throughput",
         fused.rps / max(by["hand-written"].rps, by["unfused"].rps), ">= 3", 3.0),
        ("hand-fused / fused p50 (fused p50 at most 1.5x)",
         fused_by_hand.p50_ms / fused.p50_ms, ">= 0.667", 1 / 1.5),
        ("fused / unfused throughput", fused.rps / by["unfused"].rps, "(info)", None),
    ]
    lines.append("")
    for text, value, target, floor in checks:
        verdict = "" if floor is None else ("  ok" if value >= floor else "  MISSED")
        lines.append(f"{text:<50}{value:>7.2f}x  target {target}{verdict}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""What servegraph's per-stage metrics cost: the diamond (`diamond.py`) served with metrics on
and with them off, in one run on one embedded Ray, loaded over HTTP in turn; req/s and p50,
the median of rounds, and the on / off throughput ratio (the observability issue asks >= 0.9).

Two shapes of the diamond, each deployed twice (`SERVEGRAPH_METRICS=1` and `=0` in every
deployment's `runtime_env`, so both copies start their workers the same way):

- fused (the default plan): the four light stages run inside the driver, which records each
  request end to end;
- unfused (`fuse=False`): five deployments, so every stage call is also counted, timed and
  tracked in flight in its replica (the worst case: four recorded calls per request).

Ray runs with `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, servegraph's default for the Ray it starts.
Run from anywhere: `python benchmarks/bench_metrics.py [--quick] [--concurrency 32]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench_spine import DIAMOND, _free_port, _log, embedded_ray, load
from spine_report import THROUGHPUT_FLAG, Load

METRICS_ENV = "SERVEGRAPH_METRICS"
APPS = [(shape, metrics) for shape in ("fused", "unfused") for metrics in ("on", "off")]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short loads, 2 rounds")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=float)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 6.0)
    args.warmup = 1.0 if args.quick else 2.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with embedded_ray():
        from ray import serve

        http_port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        loads = asyncio.run(rounds(args, http_port))
    print(report(loads, args))
    return 0


def with_metrics(plan: Any, on: bool) -> Any:
    """The plan with `SERVEGRAPH_METRICS` set in every deployment's runtime_env."""
    env = {METRICS_ENV: "1" if on else "0"}

    def own(stage: Any) -> Any:
        actor = dict(stage.options.get("ray_actor_options") or {})
        runtime = dict(actor.get("runtime_env") or {})
        runtime["env_vars"] = {**(runtime.get("env_vars") or {}), **env}
        actor["runtime_env"] = runtime
        return stage.model_copy(update={"options": {**stage.options,
                                                    "ray_actor_options": actor}})

    return plan.model_copy(update={"deployments": [own(s) for s in plan.deployments],
                                   "driver": own(plan.driver)})


async def rounds(args: argparse.Namespace, http_port: int) -> list[Load]:
    """The four applications deployed (in a thread, while this loop runs), then loaded in
    turn each round, the first rotating, so drift over the run falls on all alike."""
    import diamond
    import httpx

    import servegraph as sg

    started = time.perf_counter()
    for shape, metrics in APPS:
        plan = with_metrics(sg.compile(diamond.graph(), fuse=shape == "fused"), metrics == "on")
        name = f"{shape}-{metrics}"
        await asyncio.to_thread(sg.serve, plan, name=name, route_prefix=f"/{name}")
    _log(f"4 diamonds deployed in {time.perf_counter() - started:.1f} s")
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=None)
    loads: list[Load] = []
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for index in range(args.rounds):
            shift = index % len(APPS)
            for shape, metrics in APPS[shift:] + APPS[:shift]:
                url = f"http://127.0.0.1:{http_port}/{shape}-{metrics}"

                async def over_http(request: dict[str, Any], url: str = url) -> Any:
                    response = await client.post(url, json=request)
                    response.raise_for_status()
                    return response.json()

                row = await load(shape, metrics, over_http, args.concurrency, args.duration,
                                 args.warmup, DIAMOND)
                _log(f"round {index + 1}: {shape} metrics {metrics} {row.rps:.1f} req/s, "
                     f"p50 {row.p50_ms:.2f} ms")
                loads.append(row)
    await asyncio.to_thread(_delete)
    return loads


def _delete() -> None:
    from ray import serve

    for shape, metrics in APPS:
        serve.delete(f"{shape}-{metrics}")


def report(loads: list[Load], args: argparse.Namespace) -> str:
    """The median of the rounds per application, and the on / off ratios per shape."""
    by: dict[tuple[str, str], dict[str, float]] = {}
    for shape, metrics in APPS:
        rows = [row for row in loads if (row.contender, row.transport) == (shape, metrics)]
        by[shape, metrics] = {key: statistics.median(getattr(row, key) for row in rows)
                              for key in ("rps", "p50_ms", "p99_ms")}
    lines = [f"servegraph metrics on vs off: the diamond over HTTP, concurrency "
             f"{args.concurrency}, median of {args.rounds} rounds of {args.duration:g} s, "
             f"{THROUGHPUT_FLAG}={os.environ[THROUGHPUT_FLAG]}, {os.cpu_count()} CPUs",
             f"{'diamond':<10}{'metrics':>8}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"]
    for (shape, metrics), row in by.items():
        lines.append(f"{shape:<10}{metrics:>8}{row['rps']:>10.1f}{row['p50_ms']:>10.2f}"
                     f"{row['p99_ms']:>10.2f}")
    lines.append("")
    for shape in ("fused", "unfused"):
        ratio = by[shape, "on"]["rps"] / by[shape, "off"]["rps"]
        lines.append(f"{shape + ' on / off throughput':<32}{ratio:>7.2f}x  (bound >= 0.90: "
                     f"{'met' if ratio >= 0.9 else 'NOT met'})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

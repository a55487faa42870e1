"""gRPC against HTTP on the diamond, in one run on one embedded Ray: the compiled diamond
(`diamond.py`) served once, with Serve's HTTP and gRPC proxies both on, then loaded through
each front door in turn at one concurrency; req/s and p50/p99, the median of rounds, and the
gRPC / HTTP ratios.

- HTTP: `POST /diamond` with `{"x": i}` (httpx, a pool of as many connections as workers);
- gRPC: `servegraph.diamond.Diamond/Call` on one HTTP/2 channel (grpc.aio), its messages
  built from `plan.to_proto()`'s schema, what generated stubs would send. The diamond's input
  is untyped, so the request carries it as JSON text (`value`); the reply is an `int64`.

Ray runs with `RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, servegraph's default for the Ray it starts.
Run from anywhere: `python benchmarks/bench_grpc.py [--quick] [--concurrency 32]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench_spine import DIAMOND, Call, _free_port, _log, embedded_ray, load
from spine_report import THROUGHPUT_FLAG, Load

APP = "diamond"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short loads, 2 rounds")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=float)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 8.0)
    args.warmup = 1.0 if args.quick else 2.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with embedded_ray():
        from ray import serve

        from servegraph.compiler.emit.serve_config import grpc_options

        http_port, grpc_port = _free_port(), _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": http_port},
                    grpc_options=grpc_options(grpc_port))
        loads = asyncio.run(rounds(args, http_port, grpc_port))
    print(report(loads, args))
    return 0


async def rounds(args: argparse.Namespace, http_port: int, grpc_port: int) -> list[Load]:
    """The diamond deployed once (in a thread, while this loop runs), then HTTP and gRPC
    loaded alternately, the first of each round rotating."""
    import diamond
    import grpc
    import httpx

    import servegraph as sg
    from servegraph.compiler.emit.proto import proto_schema
    from servegraph.web.grpc_ingress import GrpcCodec

    plan = sg.compile(diamond.graph())
    started = time.perf_counter()
    await asyncio.to_thread(sg.serve, plan, name=APP, route_prefix=f"/{APP}")
    _log(f"diamond deployed in {time.perf_counter() - started:.1f} s")
    codec = GrpcCodec(proto_schema(plan))  # the messages `plan.to_proto()` describes
    request_class = codec.classes[codec.schema.request]
    reply_class = codec.classes[codec.schema.reply]
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=None)
    url = f"http://127.0.0.1:{http_port}/{APP}"
    loads: list[Load] = []
    async with httpx.AsyncClient(limits=limits, timeout=60) as client, \
            grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        method = channel.unary_unary(f"/{codec.schema.full_service}/Call",
                                     request_serializer=request_class.SerializeToString,
                                     response_deserializer=reply_class.FromString)
        metadata = (("application", APP),)

        async def over_http(request: dict[str, Any]) -> Any:
            response = await client.post(url, json=request)
            response.raise_for_status()
            return response.json()

        async def over_grpc(request: dict[str, Any]) -> Any:
            reply = await method(request_class(value=json.dumps(request)), metadata=metadata)
            return reply.value

        doors: list[tuple[str, Call]] = [("http", over_http), ("grpc", over_grpc)]
        for index in range(args.rounds):
            shift = index % len(doors)
            for transport, call in doors[shift:] + doors[:shift]:
                row = await load("diamond", transport, call, args.concurrency, args.duration,
                                 args.warmup, DIAMOND)
                _log(f"round {index + 1}: {transport} {row.rps:.1f} req/s, "
                     f"p50 {row.p50_ms:.2f} ms")
                loads.append(row)
    await asyncio.to_thread(_delete)
    return loads


def _delete() -> None:
    from ray import serve

    serve.delete(APP)


def report(loads: list[Load], args: argparse.Namespace) -> str:
    """The median of the rounds per front door, and the gRPC / HTTP ratios."""
    by: dict[str, dict[str, float]] = {}
    for transport in ("http", "grpc"):
        rows = [row for row in loads if row.transport == transport]
        by[transport] = {key: statistics.median(getattr(row, key) for row in rows)
                         for key in ("rps", "p50_ms", "p99_ms")}
    lines = [f"servegraph gRPC vs HTTP: the diamond, concurrency {args.concurrency}, median of "
             f"{args.rounds} rounds of {args.duration:g} s, {THROUGHPUT_FLAG}="
             f"{os.environ[THROUGHPUT_FLAG]}, {os.cpu_count()} CPUs",
             f"{'front door':<12}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"]
    for transport, row in by.items():
        lines.append(f"{transport:<12}{row['rps']:>10.1f}{row['p50_ms']:>10.2f}"
                     f"{row['p99_ms']:>10.2f}")
    lines += ["", f"{'gRPC / HTTP throughput':<32}{by['grpc']['rps'] / by['http']['rps']:>7.2f}x",
              f"{'gRPC / HTTP p50 latency':<32}"
              f"{by['grpc']['p50_ms'] / by['http']['p50_ms']:>7.2f}x"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

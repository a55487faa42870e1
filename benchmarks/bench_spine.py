"""The spine benchmark: servegraph against its peers on one diamond, as ratios, in one run.

DESIGN.md ("What fast means here") makes two promises, and this script checks both:

(a) in-process: the local executor stays within a few times plain asyncio and far below Serve's
    local testing mode (sequential requests, one event loop);
(b) on Ray Serve: the compiled driver adds no hop beyond hand-written composition, so it matches
    the best hand-written setting and beats Serve's defaults (throughput at concurrency 1 and 32,
    p50/p99 latency, through deployment handles and optionally HTTP).

Part (a) runs in a child process without `RAY_SERVE_THROUGHPUT_OPTIMIZED` (Ray 2.60's local
testing mode breaks under it, and no Ray threads share that process). Part (b) starts one
embedded Ray and one Serve; each application is deployed, measured and deleted before the
next, so they never compete for the cores. The Serve switch applies to every part (b)
contender alike and is printed, so the ratios are always like for like.

Run from anywhere, e.g. `python benchmarks/bench_spine.py --quick --json out.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from spine_report import (
    THROUGHPUT_FLAG,
    Latency,
    Load,
    environment,
    local_ratios,
    mean,
    median_rounds,
    quantile,
    report,
    serve_ratios,
)

# The switch turns on direct ingress, whose replicas drain for 30 s when deleted: that would
# add half a minute per deletion between measurements and change no request's path.
DRAIN_SETTING = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
Call = Callable[[dict[str, Any]], Awaitable[Any]]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags; unset sizes take the full or the --quick defaults."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (well under 90 s): fewer iterations, shorter loads")
    parser.add_argument("--part", choices=("all", "local", "serve"), default="all")
    parser.add_argument("--iterations", type=int, help="local and asyncio requests (2000)")
    parser.add_argument("--ltm-iterations", type=int,
                        help="local testing mode requests (300)")
    parser.add_argument("--duration-c1", type=float, help="seconds measured at c=1 (3)")
    parser.add_argument("--duration-c32", type=float, help="seconds measured at c=32 (5)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per load (1)")
    parser.add_argument("--concurrency", type=int, default=32, help="the high load (32)")
    parser.add_argument("--http", action=argparse.BooleanOptionalAction,
                        help="also measure over HTTP with httpx (default: on, off with --quick)")
    parser.add_argument("--rounds", type=int,
                        help="deploy-measure-delete rounds, contender order rotated; the "
                        "table shows each load's median round by req/s (3; 1 with --quick)")
    parser.add_argument("--throughput-optimized", action="store_true",
                        help=f"set {THROUGHPUT_FLAG}=1 for every Serve contender (also taken "
                        "from the environment)")
    parser.add_argument("--json", help="also write the results as JSON to this path")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_process and not args.json:
        parser.error("--in-process writes its rows to --json")
    quick = {"iterations": 300, "ltm_iterations": 60, "duration_c1": 1.0,
             "duration_c32": 1.5, "warmup": 0.3}
    full = {"iterations": 2000, "ltm_iterations": 300, "duration_c1": 3.0,
            "duration_c32": 5.0, "warmup": 1.0}
    full.update(http=True, rounds=3)
    quick.update(http=False, rounds=1)
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.throughput_optimized:
        os.environ[THROUGHPUT_FLAG] = "1"  # before Ray is imported: Serve reads it at import
    os.environ.setdefault(DRAIN_SETTING, "1")
    if args.in_process:
        _write_json(args.json, [asdict(row) for row in measure_local(args)])
        return 0
    optimized = os.environ.get(THROUGHPUT_FLAG, "0").lower() in ("1", "true")
    local = run_local_part(args) if args.part in ("all", "local") else []
    rounds = run_serve_part(args) if args.part in ("all", "serve") else []
    loads = median_rounds(rounds)
    ratios = local_ratios(local) + serve_ratios(loads, args.concurrency)
    print(report(optimized, local, loads, ratios, args.rounds))
    if args.json:
        _write_json(args.json, {
            "environment": environment(optimized),
            "local": [asdict(row) for row in local],
            "serve": [asdict(row) for row in loads],
            "serve_rounds": [asdict(row) for row in rounds],
            "ratios": [{"name": r.name, "value": r.value, "target": r.target,
                        "passed": r.passed} for r in ratios],
        })
    return 0


def _write_json(path: str, data: Any) -> None:
    with open(path, "w") as out:
        json.dump(data, out, indent=2)


# --- part (a): in-process, sequential ----------------------------------------------------

def run_local_part(args: argparse.Namespace) -> list[Latency]:
    """Part (a) in a child process with the Serve switch off (see the module docstring)."""
    _log("part (a): in-process contenders, in a child process")
    env = {k: v for k, v in os.environ.items() if k != THROUGHPUT_FLAG}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "local.json")
        command = [sys.executable, os.path.abspath(__file__), "--in-process", "--json", path,
                   "--iterations", str(args.iterations),
                   "--ltm-iterations", str(args.ltm_iterations)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"part (a) failed:\n{done.stdout}{done.stderr}")
        with open(path) as rows:
            return [Latency(**row) for row in json.load(rows)]


def measure_local(args: argparse.Namespace) -> list[Latency]:
    """The three in-process contenders on the same stage objects, in one event loop."""
    import diamond
    from ray import serve

    import servegraph as sg

    executor = sg.LocalExecutor(diamond.graph())
    inc = diamond.Inc()
    ltm = serve.run(diamond.hand_app(), name="ltm", _local_testing_mode=True)

    async def servegraph_local(request: dict[str, Any]) -> Any:
        return await executor.acall(request)

    async def plain_asyncio(request: dict[str, Any]) -> Any:
        return await diamond.run_asyncio(inc, request)

    async def local_testing_mode(request: dict[str, Any]) -> Any:
        return await ltm.run.remote(request)

    async def measure_all() -> list[Latency]:
        return [
            await sequential("asyncio", plain_asyncio, args.iterations),
            await sequential("servegraph-local", servegraph_local, args.iterations),
            await sequential("serve-local-testing-mode", local_testing_mode,
                             args.ltm_iterations),
        ]

    return asyncio.run(measure_all())


async def sequential(contender: str, call: Call, iterations: int) -> Latency:
    """One request at a time, after a tenth as many warm-up requests; each one checked."""
    for x in range(max(10, iterations // 10)):
        await checked(call, x)
    samples: list[float] = []
    for x in range(iterations):
        request = {"x": x}
        start = time.perf_counter()
        result = await call(request)
        samples.append(time.perf_counter() - start)
        _check(contender, x, result)
    samples.sort()
    return Latency(contender, iterations, mean(samples) * 1e6,
                   quantile(samples, 0.5) * 1e6, quantile(samples, 0.99) * 1e6)


# --- part (b): Ray Serve ------------------------------------------------------------------

@contextlib.contextmanager
def embedded_ray() -> Iterator[None]:
    """One embedded Ray for a benchmark's Serve contenders, stopped even on failure. Serve's
    switches (`THROUGHPUT_FLAG`, unless the caller chose, and `DRAIN_SETTING`) are set
    first: Serve reads them when it is imported."""
    os.environ.setdefault(THROUGHPUT_FLAG, "1")
    os.environ.setdefault(DRAIN_SETTING, "1")
    import ray

    ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def run_serve_part(args: argparse.Namespace) -> list[Load]:
    """One embedded Ray and Serve for every contender; stopped even on failure. (Not
    `embedded_ray`: this benchmark runs with Serve's throughput flag only when asked.)"""
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        _log(f"replicas import diamond from {_replica_import_check()}")
        return asyncio.run(serve_rounds(args, port))
    finally:
        ray.shutdown()


async def serve_rounds(args: argparse.Namespace, port: int) -> list[Load]:
    """Each contender deployed, measured and deleted in turn, all in one event loop: with the
    Serve switch on, handle routers (and Serve's shared long-poll client) bind to the loop
    they first run in and stop when it closes. Deploying and deleting block, so they run in
    a thread while the loop keeps serving those routers."""
    from ray import serve

    loads: list[Load] = []
    deployers = contenders()
    try:
        for round_index in range(args.rounds):
            shift = round_index % len(deployers)
            for contender, deploy in deployers[shift:] + deployers[:shift]:
                started = time.perf_counter()
                handle_call, route = await asyncio.to_thread(deploy)
                _log(f"round {round_index + 1}: {contender} deployed in "
                     f"{time.perf_counter() - started:.1f} s, measuring")
                try:
                    url = f"http://127.0.0.1:{port}{route}" if args.http else None
                    measured = await measure_loads(contender, handle_call, url, args)
                finally:
                    await asyncio.to_thread(serve.delete, contender)
                loads += [replace(row, round=round_index) for row in measured]
    finally:
        await serve.shutdown_async()
    return loads


def _replica_import_check() -> str:
    """Fail early, with a clear message, if Ray workers cannot import the stage module."""
    import ray

    @ray.remote(num_cpus=0)
    def where() -> str:
        import diamond

        return str(diamond.__file__)

    return str(ray.get(where.remote(), timeout=120))


Deploy = Callable[[], tuple[Callable[[], Call], str]]


def contenders() -> list[tuple[str, Deploy]]:
    """(application name, deploy) for the compiled pipeline and both hand-written settings."""
    import diamond
    from ray import serve

    import servegraph as sg

    def compiled() -> tuple[Callable[[], Call], str]:
        pipeline = sg.serve(sg.compile(diamond.graph()), name="servegraph",
                            route_prefix="/servegraph")
        return (lambda: pipeline.acall), "/servegraph"

    def hand(name: str, options: dict[str, Any]) -> Deploy:
        def deploy() -> tuple[Callable[[], Call], str]:
            handle = serve.run(diamond.hand_app(options), name=name, route_prefix=f"/{name}")
            return (lambda: handle.run.remote), f"/{name}"
        return deploy

    return [("hand-defaults", hand("hand-defaults", {})),
            ("hand-tuned", hand("hand-tuned", {"max_ongoing_requests": 1000})),
            ("servegraph", compiled)]


async def measure_loads(contender: str, handle_call: Callable[[], Call], url: str | None,
                        args: argparse.Namespace) -> list[Load]:
    """Concurrency 1 and N through the handle, then over HTTP when a URL is given. The handle
    call is made here, inside the loop: with the Serve switch on, a handle binds its router
    to the event loop it is first used in."""
    call = handle_call()
    loads = [await load(contender, "handle", call, 1, args.duration_c1, args.warmup),
             await load(contender, "handle", call, args.concurrency, args.duration_c32,
                        args.warmup)]
    if url is None:
        return loads
    import httpx

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def post(request: dict[str, Any]) -> Any:
            response = await client.post(url, json=request)
            response.raise_for_status()
            return response.json()

        loads += [await load(contender, "http", post, 1, args.duration_c1, args.warmup),
                  await load(contender, "http", post, args.concurrency, args.duration_c32,
                             args.warmup)]
    return loads


async def load(contender: str, transport: str, call: Call, concurrency: int,
               duration: float, warmup: float, workload: Workload | None = None) -> Load:
    """`concurrency` workers issue requests back to back: a warm-up, then `duration` measured
    (requests started before the deadline all count; the clock stops at the last reply)."""
    await run_workers(call, concurrency, warmup, contender, workload)
    start = time.perf_counter()
    samples = await run_workers(call, concurrency, duration, contender, workload)
    seconds = time.perf_counter() - start
    samples.sort()
    return Load(contender, transport, concurrency, len(samples), seconds,
                len(samples) / seconds, quantile(samples, 0.5) * 1e3,
                quantile(samples, 0.99) * 1e3)


async def run_workers(call: Call, concurrency: int, duration: float, contender: str,
                      workload: Workload | None = None) -> list[float]:
    """Latencies of the requests the workers completed; worker i sends request i, i + N, ...
    of the workload (the diamond's `{"x": i}` unless another is given), each answer checked."""
    workload = workload or DIAMOND
    deadline = time.perf_counter() + duration
    samples: list[float] = []

    async def worker(first: int) -> None:
        x = first
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            result = await call(workload.request(x))
            samples.append(time.perf_counter() - start)
            workload.check(contender, x, result)
            x += concurrency

    await asyncio.gather(*(worker(index) for index in range(concurrency)))
    return samples


# --- checks and small helpers ----------------------------------------------------------

async def checked(call: Call, x: int) -> None:
    _check("warm-up", x, await call({"x": x}))


def _check(contender: str, x: int, result: Any) -> None:
    """Every contender must compute the diamond: 2(x+1) + 3(x+1)."""
    if result != 5 * (x + 1):
        raise AssertionError(f"{contender}: diamond({x}) gave {result!r}, not {5 * (x + 1)}")


@dataclass(frozen=True)
class Workload:
    """What the load workers send: request number x, and the check of its answer."""

    request: Callable[[int], dict[str, Any]]
    check: Callable[[str, int, Any], None]


DIAMOND = Workload(lambda x: {"x": x}, _check)


def _log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"[bench_spine] {message}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())

"""The fan-out benchmark: `sg.map` over one light stage on Ray Serve, chunked against one call
per element, and the flagship's map both ways, in one run on one embedded Ray.

Part 1, a map of `square` (`@sg.deployment(fuse=False)`: its own deployment of one replica)
over 100, 2,000 and 20,000 integers, one request at a time; each width's time per request is
the median of a few repetitions after a warm-up request, every answer checked:

- (a) servegraph, the map in chunks (the default chunk size: about 4 calls per replica, at
  most 1,000 elements each);
- (b1) servegraph with `sg.map(..., chunk_size=1)`: one handle call per element (the old way);
- (b2) hand-written Serve: an ingress awaiting `asyncio.gather(*[h.remote(x) for x in xs])`
  on a target deployment of `square` with `max_ongoing_requests=1000`;
- (c) a plain Python loop over `square` in this process.

Per-element calls over many elements are slow: above `--per-element-max` elements (2,000)
(b1) and (b2) get one request, and every request is cut off at `--cap` seconds (printed as
"> N s"); each contender is deleted before the next is deployed, so a cut-off request's
leftover calls never overlap another's measurement.

Targets (the fan-out issue): (a) >= 20x faster than (b) at 2,000 elements; (a) answers
20,000 elements; (a) within 5x of (c) at 20,000 elements.

Part 2, the flagship (`flagship.py`, semantic search on the ONNX encoder: a query and 16
documents a request, the documents mapped over the encoder): req/s and p50/p99 at concurrency
32 through the pipeline handle, the flagship as built (chunked map) against the same graph
with `chunk_size=1`, both deployed side by side, rounds alternating, the median round each.
No target: the model's ~5 ms a text dominates there; the ratio is shown for information.

Every contender runs on the embedded Ray `sg.serve` starts (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`
among servegraph's switches). Run from the repository root:
`python benchmarks/bench_fanout.py [--quick] [--json out.json] [--widths 100,2000,20000]
[--no-flagship]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from bench_spine import DRAIN_SETTING, Workload, load
from spine_report import THROUGHPUT_FLAG, Load, median_rounds

import servegraph as sg

CONCURRENCY = 32
SPEEDUP_WIDTH, SPEEDUP_TARGET = 2000, 20.0     # (a) at least 20x faster than (b)
ANSWER_WIDTH = 20000                           # (a) answers a map this wide
FLOOR_WIDTH, FLOOR_TARGET = 20000, 5.0         # (a) within 5x of the plain loop
PER_ELEMENT = ("b1", "b2")
CONTENDERS = {"a": "servegraph chunked", "b1": "servegraph chunk_size=1",
              "b2": "hand-written Serve fan-out", "c": "plain Python loop"}
Call = Callable[[list[int]], Awaitable[Any]]
Deploy = Callable[[str], Callable[[], Call]]  # app name -> (in the loop) the call


@sg.deployment(fuse=False)
def square(x: int) -> int:
    """The light stage: a few hundred nanoseconds of work, so the calls are all the cost."""
    return x * x


def fanout_graph(chunk_size: int | None) -> sg.Graph:
    with sg.InputNode() as inp:
        out = sg.map(square, inp.xs, chunk_size=chunk_size)
    return sg.Graph(out, name="fanout")


class HandFanout:
    """The hand-written Serve fan-out: every element's call started at once, then gathered."""

    def __init__(self, target: Any) -> None:
        self._target = target

    async def run(self, xs: list[int]) -> list[int]:
        return list(await asyncio.gather(*[self._target.remote(x) for x in xs]))


@dataclass(frozen=True)
class Timing:
    """One contender at one width: seconds per request, or the cap a request ran past."""

    contender: str
    width: int
    seconds: list[float]
    capped_s: float | None = None

    @property
    def median_s(self) -> float | None:
        return None if self.capped_s is not None or not self.seconds else statistics.median(
            self.seconds)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, short loads")
    parser.add_argument("--widths", default="100,2000,20000",
                        help="map widths, comma-separated (100,2000,20000)")
    parser.add_argument("--repeats", type=int, help="requests timed per width (7; 3 --quick)")
    parser.add_argument("--per-element-max", type=int, default=2000,
                        help="above this width (b1) and (b2) get one request (2000)")
    parser.add_argument("--cap", type=float, help="seconds a request may take (60; 30 --quick)")
    parser.add_argument("--no-flagship", action="store_true", help="skip part 2")
    parser.add_argument("--rounds", type=int, help="flagship rounds (3; 2 with --quick)")
    parser.add_argument("--duration", type=float, help="flagship seconds a load (15; 8)")
    parser.add_argument("--warmup", type=float, help="flagship warm-up seconds (3; 2)")
    parser.add_argument("--json", help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
    defaults = {"repeats": (7, 3), "cap": (60.0, 30.0), "rounds": (3, 2),
                "duration": (15.0, 8.0), "warmup": (3.0, 2.0)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.widths = [int(width) for width in args.widths.split(",")]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault(THROUGHPUT_FLAG, "1")  # before Ray is imported: Serve reads it then
    os.environ.setdefault(DRAIN_SETTING, "0")
    timings = [plain_loop(width, args.repeats) for width in args.widths]
    try:
        measured, loads = asyncio.run(measure_serve(args))
        timings += measured
    finally:
        import ray

        ray.shutdown()  # Serve stops with Ray (see bench_fusion.rounds)
    print(fanout_report(timings, args))
    if loads:
        print("\n" + flagship_report(loads, args))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"environment": {"cpus": os.cpu_count(),
                                       THROUGHPUT_FLAG: os.environ[THROUGHPUT_FLAG]},
                       "fanout": [{**asdict(t), "median_s": t.median_s} for t in timings],
                       "targets": [{"target": text, "value": value, "passed": passed}
                                   for text, value, passed in targets(timings)],
                       "flagship": [asdict(row) for row in loads]}, out, indent=2)
    return 0


async def measure_serve(args: argparse.Namespace) -> tuple[list[Timing], list[Load]]:
    """Both Serve parts in one event loop: handle routers bind to the loop they first run in."""
    timings = await measure_fanout(args)
    return timings, [] if args.no_flagship else await measure_flagship(args)


# --- part 1: the light stage --------------------------------------------------------------


def plain_loop(width: int, repeats: int) -> Timing:
    """(c): the stage function called in a loop, in this process (one warm-up pass)."""
    xs = list(range(width))
    samples = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        result = [square(x) for x in xs]
        samples.append(time.perf_counter() - start)
        check("c", xs, result)
    return Timing("c", width, samples[1:])


def fanout_contenders() -> list[tuple[str, Deploy]]:
    """(a) first: its `sg.serve` starts the embedded Ray that the others deploy on."""
    from ray import serve

    def compiled(chunk_size: int | None) -> Deploy:
        def deploy(app: str) -> Callable[[], Call]:
            handle = sg.serve(sg.compile(fanout_graph(chunk_size)), name=app,
                              route_prefix=f"/{app}")
            return lambda: lambda xs: handle.acall({"xs": xs})
        return deploy

    def hand(app: str) -> Callable[[], Call]:
        target = serve.deployment(square, name="square").options(
            max_ongoing_requests=1000).bind()
        ingress = serve.deployment(HandFanout, name="ingress").options(
            max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
        handle = serve.run(ingress.bind(target), name=app, route_prefix=f"/{app}")
        return lambda: handle.run.remote

    return [("a", compiled(None)), ("b1", compiled(1)), ("b2", hand)]


async def measure_fanout(args: argparse.Namespace) -> list[Timing]:
    """Each contender deployed, timed at every width and deleted in turn; deploying and
    deleting block, so they run in a thread while the loop keeps serving the routers."""
    from ray import serve

    timings: list[Timing] = []
    for name, deploy in fanout_contenders():
        started = time.perf_counter()
        app = f"fanout-{name}"
        call = (await asyncio.to_thread(deploy, app))()
        _log(f"{CONTENDERS[name]} deployed in {time.perf_counter() - started:.1f} s")
        try:
            for width in args.widths:
                timing = await time_width(name, call, width, args)
                _log(f"{CONTENDERS[name]}, {width} elements: {show(timing)}")
                timings.append(timing)
                if timing.capped_s is not None:
                    break  # a wider map would take longer still
        finally:
            await asyncio.to_thread(serve.delete, app)
    return timings


async def time_width(name: str, call: Call, width: int, args: argparse.Namespace) -> Timing:
    """Seconds per request after a warm-up request; per-element contenders above
    `--per-element-max` elements get one request, with no warm-up."""
    xs = list(range(width))
    once = name in PER_ELEMENT and width > args.per_element_max
    samples: list[float] = []
    for _ in range(1 if once else args.repeats + 1):
        start = time.perf_counter()
        try:
            result = await asyncio.wait_for(call(xs), args.cap)
        except asyncio.TimeoutError:
            return Timing(name, width, samples, capped_s=args.cap)
        samples.append(time.perf_counter() - start)
        check(name, xs, result)
    return Timing(name, width, samples if once else samples[1:])


def check(name: str, xs: list[int], result: Any) -> None:
    if result != [x * x for x in xs]:
        raise AssertionError(f"{CONTENDERS[name]}: a map of {len(xs)} elements answered "
                             f"{result!r:.120}, not their squares")


# --- part 2: the flagship -----------------------------------------------------------------


def per_element_flagship() -> sg.Graph:
    """The flagship's graph (`search.build_graph(encoder="onnx")`), its map with
    `chunk_size=1`: the builder takes no chunk size, so the same stages are bound here."""
    from servegraph.pipelines import search

    with sg.InputNode(search.SearchRequest) as inp:
        enc = search.OnnxEncoder.bind()
        q = enc.encode.bind(inp.query)
        docs = sg.map(enc.encode, inp.documents, chunk_size=1)
        hits = search.Ranker.bind().rank.bind(q, docs, inp.documents, inp.top_k)
    return sg.Graph(hits, name="search_onnx")


async def measure_flagship(args: argparse.Namespace) -> list[Load]:
    """Both graphs deployed side by side (an idle one costs no CPU), loaded in turn, the
    order reversed each round; the median round of each."""
    import flagship

    graphs = {"chunked": flagship.graph(), "per-element": per_element_flagship()}
    handles = {}
    for name, graph in graphs.items():
        started = time.perf_counter()
        app = f"flagship-{name}"
        handles[name] = await asyncio.to_thread(sg.serve, sg.compile(graph), name=app,
                                                route_prefix=f"/{app}")
        _log(f"flagship {name} deployed in {time.perf_counter() - started:.1f} s")
    workload = Workload(flagship.request, flagship.check)
    rows: list[Load] = []
    order = list(graphs)
    for index in range(args.rounds):
        for name in order:
            row = await load(name, "handle", handles[name].acall, CONCURRENCY, args.duration,
                             args.warmup, workload)
            _log(f"round {index + 1}: flagship {name} {row.rps:.1f} req/s")
            rows.append(replace(row, round=index))
        order.reverse()
    return median_rounds(rows)


# --- report ---------------------------------------------------------------------------------


def show(timing: Timing | None) -> str:
    if timing is None:
        return "-"
    if timing.capped_s is not None:
        return f"> {timing.capped_s:g} s"
    median = timing.median_s
    if median is None:
        return "-"
    return f"{median * 1e6:.1f} us" if median < 1e-3 else f"{median * 1e3:.2f} ms"


def ratio(slow: Timing | None, fast: Timing | None) -> float | None:
    if slow is None or fast is None or fast.median_s is None:
        return None
    if slow.capped_s is not None:
        return slow.capped_s / fast.median_s  # a lower bound
    return None if slow.median_s is None else slow.median_s / fast.median_s


def targets(timings: list[Timing]) -> list[tuple[str, float | None, bool]]:
    """(what, the measured value, met) for each target whose width was measured; a ratio
    from a capped request is a lower bound, which meets a lower bound all the same."""
    by = {(t.contender, t.width): t for t in timings}
    rows: list[tuple[str, float | None, bool]] = []
    for b in PER_ELEMENT:
        if (b, SPEEDUP_WIDTH) in by:
            value = ratio(by[b, SPEEDUP_WIDTH], by.get(("a", SPEEDUP_WIDTH)))
            rows.append((f"(a) >= {SPEEDUP_TARGET:g}x faster than ({b}) at {SPEEDUP_WIDTH:,}",
                         value, value is not None and value >= SPEEDUP_TARGET))
    if ("a", ANSWER_WIDTH) in by:
        rows.append((f"(a) answers {ANSWER_WIDTH:,} elements", None,
                     by["a", ANSWER_WIDTH].median_s is not None))
    if ("c", FLOOR_WIDTH) in by:
        value = ratio(by.get(("a", FLOOR_WIDTH)), by["c", FLOOR_WIDTH])
        rows.append((f"(a) within {FLOOR_TARGET:g}x of (c) at {FLOOR_WIDTH:,}", value,
                     value is not None and value <= FLOOR_TARGET))
    return rows


def fanout_report(timings: list[Timing], args: argparse.Namespace) -> str:
    by = {(t.contender, t.width): t for t in timings}
    lines = [f"servegraph fan-out benchmark: sg.map over square (fuse=False, 1 replica), one "
             f"request at a time, median of {args.repeats} after a warm-up, "
             f"{THROUGHPUT_FLAG}={os.environ[THROUGHPUT_FLAG]}, {os.cpu_count()} CPUs",
             f"(b1)/(b2) above {args.per_element_max:,} elements: one request; every request "
             f"cut off at {args.cap:g} s",
             *(f"  ({key}) {text}" for key, text in CONTENDERS.items()),
             f"{'width':>7}{'(a)':>12}{'(b1)':>12}{'(b2)':>12}{'(c)':>12}"
             f"{'(b1)/(a)':>10}{'(b2)/(a)':>10}{'(a)/(c)':>10}"]
    for width in args.widths:
        cells = [show(by.get((key, width))) for key in CONTENDERS]
        pairs = [("b1", "a"), ("b2", "a"), ("a", "c")]
        ratios = [_ratio_cell(by.get((slow, width)), by.get((fast, width)))
                  for slow, fast in pairs]
        lines.append(f"{width:>7,}" + "".join(f"{cell:>12}" for cell in cells)
                     + "".join(f"{cell:>10}" for cell in ratios))
    lines += ["", "targets"]
    for text, value, passed in targets(timings):
        shown = "" if value is None else _times(value)
        lines.append(f"  {text:<42}{shown:>9}  {'PASS' if passed else 'MISS'}")
    return "\n".join(lines)


def flagship_report(loads: list[Load], args: argparse.Namespace) -> str:
    by = {row.contender: row for row in loads}
    lines = [f"flagship (search_onnx: a query and 16 documents a request), handle, concurrency "
             f"{CONCURRENCY}, median of {args.rounds} rounds of {args.duration:g} s after "
             f"{args.warmup:g} s warm-up",
             f"  {'contender':<12}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"]
    lines += [f"  {r.contender:<12}{r.requests:>9}{r.rps:>9.1f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}"
              for r in loads]
    value = by["chunked"].rps / by["per-element"].rps
    lines.append(f"  chunked / per-element throughput {_times(value)}  (info, no target)")
    return "\n".join(lines)


def _ratio_cell(slow: Timing | None, fast: Timing | None) -> str:
    """The ratio, marked as a lower bound when the slow request was cut off."""
    value = ratio(slow, fast)
    bound = value is not None and slow is not None and slow.capped_s is not None
    return ("> " if bound else "") + _times(value)


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def _log(message: str) -> None:
    print(f"[bench_fanout] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""The model benchmark: what `sg.batch` buys a real encoder, and ONNX Runtime against PyTorch.

Printed in one run, as ratios within that run (this machine is shared and noisy):

(a) the ONNX Runtime MiniLM encoder stage (`search.OnnxEncoder`) under 32 concurrent
    single-text requests, its batched method (`encode`, `sg.batch` up to 32 padded 64-token
    blocks within 5 ms) against its unbatched one (`embed`, one forward pass per text), on the
    local executor and, with `--serve`, on Ray Serve (one replica of one CPU each, both
    applications deployed side by side, measured through the pipeline handle). Rounds
    alternate the two contenders and the table keeps each one's median round, so the drift of
    a shared machine hits both alike. Target: batched >= 3x the throughput of unbatched.
(b) the two encoders on the CPU without servegraph, same texts, same threads: time per call
    and per text at batch sizes 1, 8 and 32 (batch 1 is the per-text latency, batch 32 the
    throughput), ONNX Runtime (`OnnxEncoder`) against PyTorch (`Encoder`,
    sentence-transformers). The per-text cost across batch sizes shows how much a batch can
    save on this hardware at all.
(c) the ceiling: the ONNX encoder's own path (no servegraph, no Serve) kept busy for a few
    seconds, texts/s unbatched (batches of 1) against batched (batches of 32), each in its
    best thread layout on this machine: one call at a time on every CPU's thread, or one
    single-threaded call per CPU at once (as concurrent unbatched requests run). Their ratio
    bounds what any batching, servegraph's or hand-written, can buy this encoder here.

Run from anywhere: `python benchmarks/bench_models.py [--quick] [--serve] [--json out.json]`.
The first run exports the ONNX model into the model cache (about ten seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

CONCURRENCY = 32


@dataclass(frozen=True)
class Load:
    """One contender under concurrent load."""

    contender: str
    executor: str
    concurrency: int
    requests: int
    seconds: float
    per_s: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Encoding:
    """One encoder called directly on batches of one size, one call after another."""

    encoder: str
    threads: int
    batch_size: int
    calls: int
    call_p50_ms: float
    text_ms: float  # the median call over its texts
    texts_per_s: float


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: shorter loads")
    parser.add_argument("--serve", action="store_true",
                        help="also measure part (a) on Ray Serve (embedded local Ray)")
    parser.add_argument("--duration", type=float, help="seconds per load (5; 2 with --quick)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per load (1; 0.5)")
    parser.add_argument("--rounds", type=int, help="rounds of part (a) (3; 1 with --quick)")
    parser.add_argument("--texts", type=int,
                        help="texts per encoder and batch size in part (b) (320; 64)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads of both encoders in part (b) and of the local "
                        "executor's ONNX encoder (default: every CPU)")
    parser.add_argument("--json", help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
    defaults = {"duration": (5.0, 2.0), "warmup": (1.0, 0.5), "rounds": (3, 1),
                "texts": (320, 64)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def texts() -> list[str]:
    """Realistic short texts: the flagship's corpus and queries, each made unique per
    request so no layer can cache an answer."""
    from servegraph.pipelines.search import SAMPLE_CORPUS, SAMPLE_QUERIES

    return [*SAMPLE_CORPUS, *SAMPLE_QUERIES]


def encoder_graph(batched: bool) -> Any:
    """One stage: the ONNX encoder's batched `encode` or unbatched `embed` on the payload."""
    import servegraph as sg
    from servegraph.pipelines.search import OnnxEncoder

    with sg.InputNode() as text:
        encoder = OnnxEncoder.bind()
        vector = (encoder.encode if batched else encoder.embed).bind(text)
    return sg.Graph(vector, name="onnx_encode_batched" if batched else "onnx_encode_single")


async def load(contender: str, executor: str, call: Callable[[str], Awaitable[Any]],
               duration: float, warmup: float) -> Load:
    """`CONCURRENCY` workers each send one text after another: `warmup` seconds unrecorded,
    then `duration` seconds measured. Every answer is checked to be an embedding."""
    corpus = texts()
    latencies: list[float] = []
    recording = False
    stop = False

    async def worker(index: int) -> None:
        count = 0
        while not stop:
            text = f"{corpus[(index + count) % len(corpus)]} ({index}.{count})"
            count += 1
            started = time.perf_counter()
            vector = await call(text)
            if len(vector) != 384:
                raise AssertionError(f"{contender}: not an embedding: {vector!r:.80}")
            if recording:
                latencies.append(time.perf_counter() - started)

    workers = [asyncio.ensure_future(worker(index)) for index in range(CONCURRENCY)]
    await asyncio.sleep(warmup)
    recording, started = True, time.perf_counter()
    await asyncio.sleep(duration)
    recording, elapsed = False, time.perf_counter() - started
    stop = True
    await asyncio.gather(*workers)
    latencies.sort()
    return Load(contender, executor, CONCURRENCY, len(latencies), elapsed,
                len(latencies) / elapsed, quantile(latencies, 0.5) * 1e3,
                quantile(latencies, 0.99) * 1e3)


def quantile(sorted_samples: list[float], q: float) -> float:
    if not sorted_samples:
        return float("nan")
    return sorted_samples[min(len(sorted_samples) - 1, int(q * len(sorted_samples)))]


# --- part (a) ----------------------------------------------------------------------------


CONTENDERS = {"unbatched": False, "sg.batch": True}


def rounds(executor: str, calls: dict[str, Callable[[str], Awaitable[Any]]],
           args: argparse.Namespace) -> list[Load]:
    """`args.rounds` rounds, the contenders' order reversed each round; each contender's
    median round by throughput."""
    measured: dict[str, list[Load]] = {name: [] for name in calls}
    order = list(calls)
    for number in range(args.rounds):
        for name in order:
            _log(f"part (a), {executor}, round {number + 1}/{args.rounds}: {name}")
            measured[name].append(asyncio.run(load(name, executor, calls[name], args.duration,
                                                   args.warmup)))
        order.reverse()
    return [sorted(rows, key=lambda row: row.per_s)[len(rows) // 2]
            for rows in measured.values()]


def measure_local(args: argparse.Namespace) -> list[Load]:
    """Both graphs in one process, on one already loaded encoder (swapped in as the stage)."""
    import servegraph as sg
    from servegraph.pipelines.search import OnnxEncoder

    encoder = OnnxEncoder(threads=args.threads)
    calls = {name: sg.LocalExecutor(encoder_graph(batched),
                                    overrides={OnnxEncoder: encoder}).acall
             for name, batched in CONTENDERS.items()}
    return rounds("local", calls, args)


def measure_serve(args: argparse.Namespace) -> list[Load]:
    """Both graphs deployed side by side on one embedded Ray (a replica each), measured
    through their pipeline handles, one load at a time."""
    import ray
    from ray import serve

    import servegraph as sg

    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False)
    try:
        _log("part (a), Ray Serve: deploying both applications")
        handles = {name: sg.serve(encoder_graph(batched),
                                  route_prefix=f"/{name.replace('.', '-')}")
                   for name, batched in CONTENDERS.items()}
        return rounds("serve", {name: handle.acall for name, handle in handles.items()}, args)
    finally:
        serve.shutdown()
        ray.shutdown()


# --- part (b) ----------------------------------------------------------------------------


BATCH_SIZES = (1, 8, 32)
CEILING_BATCHES = (1, 32)


@dataclass(frozen=True)
class Ceiling:
    """The ONNX encoder's raw throughput at one batch size in one thread layout."""

    batch_size: int
    threads: int  # intra-op threads per call
    calls: int    # calls running at once, one Python thread each
    texts_per_s: float


def measure_ceiling(args: argparse.Namespace) -> list[Ceiling]:
    """Each (batch size, layout) kept busy for `args.duration` seconds on fresh texts."""
    from servegraph.pipelines.search import OnnxEncoder

    cpus = os.cpu_count() or 1
    layouts = [(cpus, 1), (1, cpus)] if cpus > 1 else [(1, 1)]
    encoders = {threads: OnnxEncoder(threads=threads) for threads, _ in layouts}
    rows = []
    for size in CEILING_BATCHES:
        for threads, calls in layouts:
            _log(f"part (c): batches of {size}, {calls} call(s) of {threads} thread(s)")
            rate = busy(encoders[threads]._embed, size, calls, args.duration)
            rows.append(Ceiling(size, threads, calls, rate))
    return rows


def busy(embed: Callable[[list[str]], Any], size: int, calls: int, duration: float,
         corpus: list[str] | None = None) -> float:
    """Texts/s of `calls` Python threads each calling `embed` on batches of `size` unique
    texts back to back for `duration` seconds (ONNX Runtime releases the GIL). Given a
    `corpus`, its texts as they are, in turn (what a pipeline's requests send), instead."""
    import itertools
    import threading

    unique = corpus is None
    corpus = texts() if corpus is None else corpus
    numbers = itertools.count()
    done = [0] * calls
    embed(corpus[:size])  # the first call of a shape pays for ONNX Runtime's set-up

    def work(slot: int, deadline: float) -> None:
        while time.perf_counter() < deadline:
            first = next(numbers) * size
            batch = [corpus[(first + i) % len(corpus)] for i in range(size)]
            embed([f"{text} ({first + i})" for i, text in enumerate(batch)] if unique
                  else batch)
            done[slot] += size

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(slot, started + duration))
               for slot in range(calls)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(done) / (time.perf_counter() - started)


def measure_encoders(args: argparse.Namespace) -> list[Encoding]:
    """Both encoders' own forward paths (tokenize, model, pool, normalise), no servegraph,
    interleaved call by call so that both see the same machine."""
    import torch

    from servegraph.pipelines.search import Encoder, OnnxEncoder

    torch.set_num_threads(args.threads)
    corpus = texts()
    contenders: dict[str, Callable[[list[str]], Any]] = {
        "onnxruntime": OnnxEncoder(threads=args.threads)._embed,
        "pytorch": Encoder()._embed,
    }
    rows = []
    for size in BATCH_SIZES:
        _log(f"part (b): batches of {size}")
        batches = [[corpus[(start + i) % len(corpus)] for i in range(size)]
                   for start in range(0, args.texts, size)]
        for embed in contenders.values():  # every input shape once: torch's first call on a
            for batch in batches:          # new shape is up to 30x slower than the next ones
                embed(batch)
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for batch in batches:
            for name, embed in contenders.items():
                started = time.perf_counter()
                embed(batch)
                samples[name].append(time.perf_counter() - started)
        for name, times in samples.items():
            p50 = statistics.median(times)
            rows.append(Encoding(name, args.threads, size, len(times), p50 * 1e3,
                                 p50 * 1e3 / size, len(times) * size / sum(times)))
    return rows


# --- report ------------------------------------------------------------------------------


def ratios(loads: list[Load], encodings: list[Encoding],
           ceiling: Sequence[Ceiling] = ()) -> list[tuple[str, float, str]]:
    """(what, value, target) for each comparison the run can make."""
    found = []
    best = {size: max((row.texts_per_s for row in ceiling if row.batch_size == size),
                      default=None) for size in CEILING_BATCHES}
    if all(best.values()):
        found.append((f"ceiling: raw ONNX texts/s, batches of {CEILING_BATCHES[-1]} / of 1",
                      best[CEILING_BATCHES[-1]] / best[1], ""))
    for executor in ("local", "serve"):
        by_name = {row.contender: row for row in loads if row.executor == executor}
        if {"sg.batch", "unbatched"} <= set(by_name):
            found.append((f"{executor}: sg.batch / unbatched throughput at c={CONCURRENCY}",
                          by_name["sg.batch"].per_s / by_name["unbatched"].per_s, ">= 3x"))
            found.append((f"{executor}: unbatched / sg.batch p50 latency",
                          by_name["unbatched"].p50_ms / by_name["sg.batch"].p50_ms, ""))
    by_key = {(row.encoder, row.batch_size): row for row in encodings}
    for size in BATCH_SIZES:
        ort, pt = by_key.get(("onnxruntime", size)), by_key.get(("pytorch", size))
        if ort and pt and size == 1:
            found.append(("pytorch / onnxruntime single-text p50 latency",
                          pt.call_p50_ms / ort.call_p50_ms, ""))
        elif ort and pt:
            found.append((f"onnxruntime / pytorch throughput, batches of {size}",
                          ort.texts_per_s / pt.texts_per_s, ""))
    for name in ("onnxruntime", "pytorch"):
        one, most = by_key.get((name, 1)), by_key.get((name, BATCH_SIZES[-1]))
        if one and most:
            found.append((f"{name}: per-text time, batch of 1 / batch of {most.batch_size}",
                          one.text_ms / most.text_ms, ""))
    return found


def report(loads: list[Load], encodings: list[Encoding],
           ceiling: Sequence[Ceiling] = ()) -> str:
    lines = [f"(a) ONNX encoder stage, {CONCURRENCY} concurrent single-text requests",
             f"  {'contender':<10} {'executor':<8} {'requests':>8} {'texts/s':>9} "
             f"{'p50 ms':>8} {'p99 ms':>8}"]
    lines += [f"  {r.contender:<10} {r.executor:<8} {r.requests:>8} {r.per_s:>9.1f} "
              f"{r.p50_ms:>8.1f} {r.p99_ms:>8.1f}" for r in loads]
    lines += ["", "(b) encoders on the CPU, same texts, called directly",
              f"  {'encoder':<12} {'threads':>7} {'batch':>5} {'calls':>5} "
              f"{'p50 ms/call':>11} {'ms/text':>8} {'texts/s':>8}"]
    lines += [f"  {r.encoder:<12} {r.threads:>7} {r.batch_size:>5} {r.calls:>5} "
              f"{r.call_p50_ms:>11.2f} {r.text_ms:>8.2f} {r.texts_per_s:>8.1f}"
              for r in encodings]
    if ceiling:
        lines += ["", "(c) the ceiling: the ONNX encoder's own path kept busy, best layouts",
                  f"  {'batch':>5} {'threads':>7} {'calls at once':>13} {'texts/s':>8}"]
        lines += [f"  {r.batch_size:>5} {r.threads:>7} {r.calls:>13} {r.texts_per_s:>8.1f}"
                  for r in ceiling]
    lines += ["", "ratios"]
    for what, value, target in ratios(loads, encodings, ceiling):
        verdict = ""
        if target:
            verdict = f"  (target {target}: {'met' if value >= 3 else 'NOT met'})"
        lines.append(f"  {what:<58} {value:6.2f}x{verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _log(f"{os.cpu_count()} CPUs; {args.duration:g} s per load after {args.warmup:g} s warm-up")
    loads = measure_local(args)
    if args.serve:
        loads += measure_serve(args)
    encodings = measure_encoders(args)
    ceiling = measure_ceiling(args)
    print(report(loads, encodings, ceiling))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"loads": [asdict(r) for r in loads],
                       "encoders": [asdict(r) for r in encodings],
                       "ceiling": [asdict(r) for r in ceiling],
                       "ratios": [{"name": n, "value": v, "target": t}
                                  for n, v, t in ratios(loads, encodings, ceiling)]},
                      out, indent=2)
    return 0


def _log(message: str) -> None:
    print(f"[bench_models] {message}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())

"""The cascade benchmark: the digits cascade (`pipelines/digits_cascade.py`) against the
always-ensemble digits pipeline (`pipelines/digits.py`), in one run.

Printed, on the 450 held-out images, one image per request (so escalation is per image):

- accuracy of cascade and ensemble, and its difference in points, through the local executor;
- the escalation rate: the fraction of requests the cascade sent to the ensemble arm;
- throughput (req/s) and p50/p99 latency at concurrency 32 of both pipelines, and their ratio,
  on the local executor and, with `--serve`, on Ray Serve (the embedded Ray `sg.serve` starts,
  with `RAY_SERVE_THROUGHPUT_OPTIMIZED=1` among servegraph's switches; both applications
  deployed side by side, measured through their pipeline handles). Rounds alternate the
  contenders and each keeps its median round, so the drift of a shared machine hits both
  alike. Every answer is checked to be one prediction that took the arm the logistic
  regression's probability says it must.

Target (the cascade issue): cascade throughput >= 2x the ensemble's at concurrency 32, with
held-out accuracy within 0.5 points of the ensemble's, at the TAU that `choose_tau` takes on
the validation split. The threshold is not tuned here; the report says whether it was met.

Run from anywhere: `python benchmarks/bench_cascade.py [--quick] [--serve] [--json out.json]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench_spine import Call, Workload, load
from spine_report import Load, median_rounds

CONCURRENCY = 32
TARGET_SPEEDUP = 2.0
MAX_ACCURACY_LOSS = 0.5  # points
CONTENDERS = ("cascade", "ensemble")


@dataclass(frozen=True)
class Accuracy:
    """Held-out figures of both pipelines, one image per request, on the local executor."""

    tau: float
    images: int
    ensemble: float
    cascade: float
    escalation: float

    @property
    def loss_points(self) -> float:
        return (self.ensemble - self.cascade) * 100


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: shorter loads")
    parser.add_argument("--serve", action="store_true",
                        help="also measure on Ray Serve (embedded local Ray)")
    parser.add_argument("--duration", type=float, help="seconds per load (5; 2 with --quick)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per load (1; 0.5)")
    parser.add_argument("--rounds", type=int, help="rounds per executor (3; 1 with --quick)")
    parser.add_argument("--json", help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
    defaults = {"duration": (5.0, 2.0), "warmup": (1.0, 0.5), "rounds": (3, 1)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def measure_accuracy() -> Accuracy:
    from servegraph.pipelines import digits_cascade

    results = digits_cascade.held_out()
    cascade, ensemble = results["cascade"], results["ensemble"]
    return Accuracy(digits_cascade.TAU, cascade.requests, ensemble.accuracy, cascade.accuracy,
                    cascade.escalation)


def workload(contender: str) -> Workload:
    """Request x: held-out image x (cycling). The check: one prediction, from the arm the
    logistic regression's top probability picks (the ensemble always votes with three)."""
    from servegraph.pipelines import digits, digits_cascade

    images = digits.load_split().test_images
    logreg = digits.LogisticRegressionModel()
    must_escalate = [contender == "ensemble" or max(p) < digits_cascade.TAU
                     for p in logreg.predict(digits.scale(images).tolist())]

    def check(name: str, x: int, result: Any) -> None:
        index = x % len(images)
        if len(result) != 1 or digits_cascade.escalated(result[0]) != must_escalate[index]:
            raise AssertionError(f"{name}: image {index} answered {result!r:.120}, expected "
                                 f"{'the ensemble' if must_escalate[index] else 'logreg'}")

    return Workload(lambda x: {"images": [images[x % len(images)]]}, check)


def rounds(executor: str, calls: dict[str, Call], args: argparse.Namespace) -> list[Load]:
    """`args.rounds` rounds, the contenders' order reversed each round; the median rounds."""
    workloads = {name: workload(name) for name in calls}
    measured: list[Load] = []
    order = list(calls)
    for number in range(args.rounds):
        for name in order:
            _log(f"{executor}, round {number + 1}/{args.rounds}: {name}")
            measured.append(asyncio.run(load(name, executor, calls[name], CONCURRENCY,
                                             args.duration, args.warmup, workloads[name])))
        order.reverse()
    return median_rounds(measured)


def graphs() -> dict[str, Callable[[], Any]]:
    from servegraph.pipelines import digits, digits_cascade

    return {"cascade": digits_cascade.build_graph, "ensemble": digits.build_graph}


def measure_local(args: argparse.Namespace) -> list[Load]:
    """Both pipelines in this process, each on its own executor (its own model instances)."""
    import servegraph as sg

    calls = {name: sg.LocalExecutor(build()).acall for name, build in graphs().items()}
    return rounds("local", calls, args)


def measure_serve(args: argparse.Namespace) -> list[Load]:
    """Both pipelines deployed side by side on the embedded Ray that the first `sg.serve`
    starts with servegraph's switches (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1` among them), packed
    for one GPU (logical where none exists: the CNN asks for a quarter), measured through
    their pipeline handles, one load at a time."""
    import servegraph as sg

    cluster = sg.ClusterSpec(gpus=1)
    try:
        handles = {}
        for name, build in graphs().items():
            started = time.perf_counter()
            app = f"digits-{name}"
            handles[name] = sg.serve(sg.compile(build(), cluster=cluster), name=app,
                                     route_prefix=f"/{app}")
            _log(f"serve: {app} deployed in {time.perf_counter() - started:.1f} s")
        return rounds("serve", {name: handle.acall for name, handle in handles.items()}, args)
    finally:  # Serve stops with Ray (see bench_fusion.rounds: the handles' own loop)
        import ray

        ray.shutdown()


# --- report ------------------------------------------------------------------------------


def speedups(loads: list[Load]) -> dict[str, float]:
    """Per executor measured: cascade req/s over ensemble req/s."""
    by = {(row.transport, row.contender): row for row in loads}
    return {executor: by[executor, "cascade"].rps / by[executor, "ensemble"].rps
            for executor in ("local", "serve") if (executor, "cascade") in by}


def verdicts(accuracy: Accuracy, loads: list[Load]) -> dict[str, bool]:
    """Whether each part of the target was met, per executor measured."""
    accurate = accuracy.loss_points <= MAX_ACCURACY_LOSS
    return {executor: accurate and ratio >= TARGET_SPEEDUP
            for executor, ratio in speedups(loads).items()}


def report(accuracy: Accuracy, loads: list[Load], args: argparse.Namespace) -> str:
    loss = accuracy.loss_points
    lines = [f"digits cascade benchmark: tau {accuracy.tau}, {accuracy.images} held-out images, "
             f"one per request, {os.cpu_count()} CPUs",
             f"  held-out accuracy  ensemble {accuracy.ensemble:.4f}  cascade "
             f"{accuracy.cascade:.4f}  ({loss:.2f} points below; target <= "
             f"{MAX_ACCURACY_LOSS}: {'met' if loss <= MAX_ACCURACY_LOSS else 'NOT met'})",
             f"  escalation rate    {accuracy.escalation:.1%} of requests took the ensemble arm",
             "",
             f"throughput at concurrency {CONCURRENCY}, median of {args.rounds} round(s) of "
             f"{args.duration:g} s",
             f"  {'contender':<10} {'executor':<8} {'requests':>8} {'req/s':>9} {'p50 ms':>8} "
             f"{'p99 ms':>8}"]
    lines += [f"  {r.contender:<10} {r.transport:<8} {r.requests:>8} {r.rps:>9.1f} "
              f"{r.p50_ms:>8.1f} {r.p99_ms:>8.1f}" for r in loads]
    lines += ["", "ratios"]
    met = verdicts(accuracy, loads)
    for executor, ratio in speedups(loads).items():
        lines.append(f"  {executor}: cascade / ensemble throughput  {ratio:6.2f}x  (target >= "
                     f"{TARGET_SPEEDUP:g}x: {'met' if ratio >= TARGET_SPEEDUP else 'NOT met'})")
    lines.append(f"  accuracy: cascade - ensemble       {-loss:+6.2f} points")
    lines.append("")
    for executor, ok in met.items():
        lines.append(f"2x target on {executor}, accuracy within {MAX_ACCURACY_LOSS} points: "
                     f"{'MET' if ok else 'NOT MET'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _log(f"{os.cpu_count()} CPUs; {args.duration:g} s per load after {args.warmup:g} s warm-up")
    accuracy = measure_accuracy()
    loads = measure_local(args)
    if args.serve:
        loads += measure_serve(args)
    print(report(accuracy, loads, args))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"accuracy": {**asdict(accuracy), "loss_points": accuracy.loss_points},
                       "loads": [asdict(row) for row in loads],
                       "speedups": speedups(loads), "target_met": verdicts(accuracy, loads)},
                      out, indent=2)
    return 0


def _log(message: str) -> None:
    print(f"[bench_cascade] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

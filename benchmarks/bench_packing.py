"""The packing benchmark: how many GPUs servegraph's plans use, whether Ray can place them, and
how long compiling a large pipeline takes, in one run.

(a) Over random stage mixes (seeded; 1-6 GPU stages of 0.5-60 GiB each, at most the GPU, 1-8
    replicas, GPUs of 24/40/80 GiB), GPUs used / ceil(sum of memory / GPU memory) for:
    servegraph's plan (the real `sg.compile` of a generated graph, cross-checked against the pack
    module's `gpus_needed` on the demands the resources pass builds), one GPU per replica, and
    Ray's default when every replica says `num_gpus=0.5` (counting the layouts that put more
    memory on a GPU than it has). The Martello-Toth L2 bound shows what any packing could reach:
    a model above half a GPU needs a GPU of its own, which ceil(sum / size) ignores. Run for
    memory drawn uniformly and log-uniformly, since the ratio depends on the distribution.
    Whether Ray lands the plan is simulated after Ray 2.60's `NodeResourceInstanceSet::
    TryAllocate` (src/ray/common/scheduling/resource_instance_set.cc): a fractional request
    takes the instance with the least room that still fits (lowest index on a tie), a whole
    one the first fully free instances. The plan's replicas arrive in the order Serve creates
    them (servegraph binds larger fractions first) and in random orders, on exactly the GPUs
    the plan uses.
(b) Compile time of random DAGs of 1,000 and 10,000 stages (each its own deployment, edges to
    up to two recent nodes, every node reaching an output), per stage, to show linear growth.

Run from the repository root: `python -m benchmarks.bench_packing` (or the file's path).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import servegraph as sg
from servegraph.compiler.passes.pack import Demand, gpus_needed
from servegraph.compiler.passes.resources import GRID, RESOLUTION

GIB = 2**30
GPU_SIZES_GIB = (24, 40, 80)
LARGEST_MODEL_GIB = 60.0
SMALLEST_MODEL_GIB = 0.5


@dataclass(frozen=True)
class Mix:
    gpu_memory: int                          # bytes per GPU
    stages: tuple[tuple[int, int], ...]      # (memory in bytes, replicas) per stage


@dataclass(frozen=True)
class MixResult:
    bound: int            # ceil(sum of memory / GPU memory)
    l2: int               # Martello-Toth L2 bound on the same memory
    ours: int             # GPUs the compiled plan uses
    naive: int            # one GPU per replica
    halves: int           # num_gpus=0.5 for every replica
    halves_oom: bool      # ... placed by Ray in Serve's order puts too much memory on a GPU
    halves_oom_random: int          # random orders (of `orders`) that do
    serve_unschedulable: bool       # Ray cannot place our plan in Serve's creation order
    serve_oom: bool                 # ... or places it with too much memory on a GPU
    serve_same_fractions: bool      # Ray's placement gives every GPU the plan's fractions
    random_unschedulable: int       # random orders (of `orders`) Ray cannot place


@dataclass(frozen=True)
class CompileTime:
    """Seconds of one DAG's compile: wall clock, and CPU time of this process (what the
    targets judge: on a shared machine wall time also counts other processes' turns)."""

    shape: str
    stages: int
    build_s: float
    wall_s: float
    cpu_s: float

    @property
    def per_stage_us(self) -> float:
        return self.cpu_s / self.stages * 1e6


# --- mixes and the layouts compared ------------------------------------------------------------

def random_mixes(count: int, seed: int, log_uniform: bool) -> list[Mix]:
    rng = random.Random(seed)
    mixes = []
    for _ in range(count):
        size = rng.choice(GPU_SIZES_GIB)
        low, high = SMALLEST_MODEL_GIB, min(LARGEST_MODEL_GIB, size)
        stages = []
        for _ in range(rng.randint(1, 6)):
            gib = (math.exp(rng.uniform(math.log(low), math.log(high))) if log_uniform
                   else rng.uniform(low, high))
            stages.append((min(round(gib * GIB), size * GIB), rng.randint(1, 8)))
        mixes.append(Mix(size * GIB, tuple(stages)))
    return mixes


@sg.deployment
def model(x: int) -> int:
    return x


def compile_mix(mix: Mix) -> sg.CompiledPipeline:
    """The product's plan: one function stage per model, on a cluster with a GPU per replica."""
    with sg.InputNode() as inp:
        outs = [model.options(name=f"m{i}", num_replicas=replicas, gpu_memory=memory).bind(inp)
                for i, (memory, replicas) in enumerate(mix.stages)]
    cluster = sg.ClusterSpec(gpus=sum(r for _, r in mix.stages), gpu_memory=mix.gpu_memory)
    return sg.compile(sg.Graph(outs, name="mix"), cluster=cluster)


def derived_units(memory: int, gpu_memory: int) -> int:
    """The fraction the resources pass derives: memory rounded up onto the 1/GRID grid."""
    return -(-memory * GRID // gpu_memory) * (RESOLUTION // GRID)


def serve_order(plan: sg.CompiledPipeline) -> list[tuple[str, int]]:
    """(stage, units) per replica in the order Serve creates them: as
    serving.app.deploy_order binds the stages (larger fractions first, stable), each
    stage's replicas together."""
    stages = sorted(plan.deployments, key=lambda s: -s.resources.gpus)
    return [(s.name, round(s.resources.gpus * RESOLUTION))
            for s in stages for _ in range(s.resources.replicas.start)]


def ray_place(units: Sequence[int], gpus: int) -> list[tuple[int, ...] | None]:
    """Ray 2.60's instance allocation on one node, request by request in arrival order: the
    GPU indices each request gets, None for one left pending (nothing is freed, so a pending
    request never becomes placeable)."""
    free = [RESOLUTION] * gpus
    placed: list[tuple[int, ...] | None] = []
    for demand in units:
        if demand >= RESOLUTION:  # whole GPUs: fully free instances in index order
            whole = [i for i, room in enumerate(free) if room == RESOLUTION][:demand // RESOLUTION]
            if len(whole) * RESOLUTION < demand:
                placed.append(None)
                continue
            for i in whole:
                free[i] = 0
            placed.append(tuple(whole))
            continue
        best = -1
        for i, room in enumerate(free):  # best fit; `<` keeps the lowest index on a tie
            if room >= demand and (best < 0 or room - demand < free[best] - demand):
                best = i
        if best < 0:
            placed.append(None)
            continue
        free[best] -= demand
        placed.append((best,))
    return placed


def memory_over(placed: Sequence[tuple[int, ...] | None], memory: Sequence[int],
                gpus: int, capacity: int) -> bool:
    """Whether some GPU holds more memory than it has."""
    used = [0] * gpus
    for where, need in zip(placed, memory):
        for i in where or ():
            used[i] += need // len(where or (1,))
    return max(used, default=0) > capacity


def martello_toth_l2(sizes: Sequence[int], capacity: int) -> int:
    """The L2 bound for bin packing: items above capacity - a each need a bin, items above
    half share none with each other, and the rest fill what those leave at best."""
    best = -(-sum(sizes) // capacity)
    for a in {0, *(w for w in sizes if 2 * w <= capacity)}:
        big = [w for w in sizes if w > capacity - a]
        half = [w for w in sizes if 2 * w > capacity >= w + a]
        small = sum(w for w in sizes if a <= w and 2 * w <= capacity)
        spare = len(half) * capacity - sum(half)
        best = max(best, len(big) + len(half) + max(0, -(-(small - spare) // capacity)))
    return best


def measure_mix(mix: Mix, rng: random.Random, orders: int) -> MixResult:
    size = mix.gpu_memory
    memory_of = {f"m{i}": memory for i, (memory, _) in enumerate(mix.stages)}
    sizes = [memory for memory, replicas in mix.stages for _ in range(replicas)]
    plan = compile_mix(mix)
    layout = plan.gpu_layout
    assert layout is not None
    ours = layout.used
    demands = [Demand(f"m{i}", r, derived_units(memory, size), memory, i)
               for i, (memory, replicas) in enumerate(mix.stages) for r in range(replicas)]
    bound = -(-sum(sizes) // size)
    if gpus_needed(demands, size) != ours or not bound <= layout.lower_bound <= ours:
        raise AssertionError(f"the compiled plan disagrees with the pack module on {mix}")

    arrivals = serve_order(plan)
    placed = ray_place([u for _, u in arrivals], ours)
    ray_fractions = [sorted(u for (_, u), where in zip(arrivals, placed) if where == (i,))
                     for i in range(ours)]
    plan_fractions = [sorted(round(r.gpus * RESOLUTION) for r in gpu.replicas)
                      for gpu in layout.gpus[:ours]]
    random_unschedulable = 0
    for _ in range(orders):
        shuffled = rng.sample(arrivals, len(arrivals))
        random_unschedulable += None in ray_place([u for _, u in shuffled], ours)

    halves = math.ceil(len(sizes) / 2)
    halves_oom_random = 0
    for _ in range(orders):
        shuffled = rng.sample(sizes, len(sizes))
        halves_oom_random += memory_over(ray_place([RESOLUTION // 2] * len(sizes), halves),
                                         shuffled, halves, size)
    return MixResult(
        bound=bound, l2=martello_toth_l2(sizes, size), ours=ours, naive=len(sizes),
        halves=halves,
        halves_oom=memory_over(ray_place([RESOLUTION // 2] * len(sizes), halves), sizes,
                               halves, size),
        halves_oom_random=halves_oom_random,
        serve_unschedulable=None in placed,
        serve_oom=memory_over(placed, [memory_of[s] for s, _ in arrivals], ours, size),
        serve_same_fractions=ray_fractions == plan_fractions,
        random_unschedulable=random_unschedulable,
    )


# --- compile time ------------------------------------------------------------------------------

@sg.deployment
def combine(a: int, b: int = 0) -> int:
    return a + b


@sg.deployment
class Combine:
    def run(self, a: int, b: int = 0) -> int:
        return a + b


def random_dag(stages: int, seed: int, shape: str) -> sg.Graph:
    """`stages` call nodes, each on its own deployment, reading one or two of the eight nodes
    made before it; the nodes no one reads are the outputs, so every node reaches one.
    `named`: function stages with their own names; `class`: one class bound `stages` times,
    named Combine, Combine_1, ... by the compiler."""
    rng = random.Random(seed)
    with sg.InputNode() as inp:
        made: list[Any] = [inp.x]
        unread: dict[int, Any] = {}
        for index in range(stages):
            args = rng.sample(made[-8:], min(rng.randint(1, 2), len(made[-8:])))
            for arg in args:
                unread.pop(id(arg), None)
            node = (combine.options(name=f"s{index}").bind(*args) if shape == "named"
                    else Combine.bind().run.bind(*args))
            made.append(node)
            unread[id(node)] = node
    return sg.Graph(list(unread.values()), name="dag")


def time_compile(stages: int, shape: str, repeats: int, seed: int) -> CompileTime:
    """The best of `repeats` compiles of one generated DAG, each after a full collection."""
    gc.collect()
    start = time.perf_counter()
    graph = random_dag(stages, seed, shape)
    build = time.perf_counter() - start
    wall, cpu = math.inf, math.inf
    for _ in range(repeats):
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        plan = sg.compile(graph)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
        assert len(plan.deployments) == stages
    return CompileTime(shape, stages, build, wall, cpu)


# --- the report --------------------------------------------------------------------------------

def summary(values: Sequence[float]) -> tuple[float, float, float, float]:
    """mean, p50, p95 (nearest rank), max."""
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return sum(ordered) / len(ordered), rank(0.5), rank(0.95), ordered[-1]


def packing_report(name: str, results: Sequence[MixResult], orders: int) -> list[str]:
    n = len(results)

    def row(label: str, value: Callable[[MixResult], float]) -> str:
        mean, p50, p95, top = summary([value(r) for r in results])
        return f"  {label:<50}{mean:>7.3f}{p50:>7.3f}{p95:>7.3f}{top:>7.3f}"

    return [
        f"(a) memory {name}: {n} mixes; GPUs used / ceil(sum of memory / GPU memory)",
        f"  {'layout':<50}{'mean':>7}{'p50':>7}{'p95':>7}{'max':>7}",
        row("servegraph plan (sg.compile, best-fit decreasing)", lambda r: r.ours / r.bound),
        row("naive: one GPU per replica", lambda r: r.naive / r.bound),
        row("Ray default: num_gpus=0.5 each (OOMs below)", lambda r: r.halves / r.bound),
        row("Martello-Toth L2 bound (no layout uses fewer)", lambda r: r.l2 / r.bound),
        row("servegraph plan / L2 bound", lambda r: r.ours / r.l2),
        "  servegraph plan placed by Ray (simulated), on the plan's own GPUs:",
        f"    Serve's creation order: unschedulable "
        f"{sum(r.serve_unschedulable for r in results)}/{n}, memory over a GPU "
        f"{sum(r.serve_oom for r in results)}/{n}, every GPU as planned "
        f"{sum(r.serve_same_fractions for r in results)}/{n}",
        f"    random orders: unschedulable {sum(r.random_unschedulable for r in results)}/"
        f"{n * orders} orders, in {sum(r.random_unschedulable > 0 for r in results)}/{n} "
        "mixes",
        f"  Ray default num_gpus=0.5: memory over a GPU (an OOM) in "
        f"{sum(r.halves_oom for r in results)}/{n} layouts in Serve's order, "
        f"{sum(r.halves_oom_random for r in results)}/{n * orders} in random orders",
    ]


def target(name: str, value: float, bound: float, unit: str = "") -> str:
    verdict = "PASS" if value <= bound else "MISS"
    return f"  {name:<58}{value:>9.3f}{unit}  target <= {bound:g}{unit}  {verdict}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixes", type=int, default=1000, help="stage mixes per distribution")
    parser.add_argument("--orders", type=int, default=5, help="random arrival orders per mix")
    parser.add_argument("--sizes", default="1000,10000", help="DAG sizes timed, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="compiles per DAG (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--part", choices=("all", "packing", "compile"), default="all")
    parser.add_argument("--json", help="also write the results as JSON to this path")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    lines = [f"servegraph packing benchmark: Python {platform.python_version()}, "
             f"{os.cpu_count()} CPUs, seed {args.seed}"]
    checks: list[str] = []
    data: dict[str, Any] = {}
    if args.part in ("all", "packing"):
        for name, log_uniform in (("uniform", False), ("log-uniform", True)):
            rng = random.Random(args.seed)
            results = [measure_mix(mix, rng, args.orders)
                       for mix in random_mixes(args.mixes, args.seed, log_uniform)]
            lines += ["", *packing_report(
                f"{name} in [0.5, min(60, G)] GiB, G in {GPU_SIZES_GIB} GiB", results,
                args.orders)]
            checks += [
                target(f"{name}: servegraph / ceil(sum) bound, mean",
                       summary([r.ours / r.bound for r in results])[0], 1.10),
                target(f"{name}: servegraph / L2 bound, mean",
                       summary([r.ours / r.l2 for r in results])[0], 1.10),
                target(f"{name}: plans Ray cannot place in Serve's order",
                       sum(r.serve_unschedulable for r in results), 0),
            ]
            data[name] = [asdict(r) for r in results]
    if args.part in ("all", "compile"):
        times = [time_compile(int(size), shape, args.repeats, args.seed)
                 for shape in ("named", "class") for size in args.sizes.split(",")]
        lines += ["", f"(b) sg.compile of random DAGs, best of {args.repeats}; named: a function "
                  "stage per node under its own name, class: one class bound once per node",
                  f"  {'shape':<8}{'stages':>8}{'build s':>10}{'wall s':>10}{'cpu s':>10}"
                  f"{'cpu us/stage':>14}"]
        lines += [f"  {t.shape:<8}{t.stages:>8}{t.build_s:>10.3f}{t.wall_s:>10.3f}"
                  f"{t.cpu_s:>10.3f}{t.per_stage_us:>14.1f}" for t in times]
        for shape in ("named", "class"):
            rows = sorted((t for t in times if t.shape == shape), key=lambda t: t.stages)
            for t in rows:
                bound = 0.5 if t.stages <= 1000 else 5.0 * t.stages / 10_000
                checks.append(target(f"{shape}: compile {t.stages} stages, cpu", t.cpu_s,
                                     bound, " s"))
            if len(rows) > 1:
                first, last = rows[0], rows[-1]
                checks.append(target(
                    f"{shape}: cpu us/stage at {last.stages} / at {first.stages} stages",
                    last.per_stage_us / first.per_stage_us, 1.5))
        data["compile"] = [asdict(t) for t in times]
    print("\n".join([*lines, "", "targets", *checks]))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(data, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

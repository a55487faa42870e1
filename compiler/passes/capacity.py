"""The capacity pass: replicas, CPUs (so threads), request limits and autoscaling for each
stage, from a profile, to serve a target load on the fewest CPUs the cluster spec allows.

It runs after resources and before pack (so the packer places what it decided) when
`sg.compile` is given a profile. With a `Target` it sizes every profiled stage to run at
`TARGET_UTILISATION` at the target's rps, lowering the utilisation in steps until the
predicted p99 meets `p99_ms`; without one it finds, by bisection, the most requests a second
the cluster serves and sizes the stages for that at full utilisation. The arithmetic is in
`compiler.capacity`. What it decides it writes as options (`num_replicas` or an
`autoscaling_config`, `ray_actor_options.num_cpus`, `max_ongoing_requests`; each batched
method's size, slots and wait as `state.planned_batches`) and recomputes the
stage's `StageResources` with `stage_resources`, the one place they are worked out, so the
packer, fusion, lower, explain and the Serve config read the planned facts like any other.

A GPU stage's share of a GPU is first raised to hold the GPU memory its profile measured
(`capacity_gpu`). Light stages (one replica of one CPU serves the load, under
`LIGHT_WORK_MS` a request, no batching, no GPU) stay one replica reserving no CPU (their
work counts in the CPUs' bound), so the fuse pass can still run them in the driver. The
driver gets the replicas its share of Serve's work needs (unless `sg.Graph(driver=...)` sets
them). A load the cluster cannot serve raises `CapacityError` naming the bottleneck stage and
what it would need. The predictions (`predict`, run once fusion has decided which stages run
in the driver) go into the plan.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

from ...dag import CallNode, batch_spec
from ...errors import CapacityError, CompileError
from ..capacity import (
    TARGET_UTILISATION,
    Sizing,
    StageLoad,
    cpu_bound_rps,
    driver_ms,
    most_rps,
    overhead_ms,
    size_stage,
    stage_load,
)
from ..profile import Profile, Target
from ..state import CompileState, spec_of_group
from . import capacity_errors as errors
from .capacity_errors import Bottleneck
from .capacity_gpu import gpu_memory_planned
from .capacity_layout import (
    best_layout,
    driver_sizing,
    fused_sets,
    only_fused,
    plannable_into_driver,
    spend_spare,
)
from .capacity_options import (
    Budget,
    CapacityDecision,
    apply,
    batched,
    critical_p99,
    hops_and_fused_work,
    replicas_fixed,
    reserved_cpus,
    reserved_total,
    served_stages,
    with_waits,
)

PASS = "capacity"
LIGHT_WORK_MS = 1.0  # a stage doing less a request may run in the driver's event loop
UTILISATIONS = (TARGET_UTILISATION, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)  # tried for a p99 target


def capacity_pass(state: CompileState, profile: Profile, target: Target | None,
                  fuse: bool = True, taken: tuple[float, float] = (0.0, 0.0)
                  ) -> tuple[CompileState, CapacityDecision]:
    """The state with the planned options and facts, and the decision `predict` reads once
    the fuse pass has run (see the module docstring). `fuse=False` (fusion off) plans the
    split layout only. `taken`: the CPUs and GPUs of the cluster that other stages than this
    graph's reserve (an `sg.App`'s other graphs, `capacity_app`)."""
    state, gpu_measured = gpu_memory_planned(state, profile)
    loads = profiled_loads(state, profile)
    if not loads:
        raise CompileError(
            f"the profile of {profile.pipeline!r} has no stage of this graph: its stages are "
            f"{', '.join(s.label for s in profile.stages) or 'none'}",
            pass_name=PASS, hint="profile this graph: sg.profile(graph, payloads)")
    gpus = _gpus(state)
    budget = Budget(cpus=_cpus(state, profile) - taken[0],
                    gpus=None if gpus is None else gpus - taken[1],
                    driver_fixed=_driver_fixed(state))
    fusable = plannable_into_driver(state, loads, budget) if fuse else frozenset()
    layouts = fused_sets(fusable, frozenset(name for name in fusable if _light(state, loads[name])))
    if target is None:
        decision = _most_throughput(state, loads, budget, layouts)
    else:
        decision = _for_target(state, loads, budget, target, layouts,
                               lambda cap: profiled_loads(state, profile, cap))
    # the waits for the replicas spare CPUs may have added
    decision = dataclasses.replace(with_waits(decision), gpu_measured=gpu_measured)
    return apply(state, decision), decision


def profiled_loads(state: CompileState, profile: Profile, cap: int | None = None
                   ) -> dict[str, StageLoad]:
    """Each deployment some payload called, as a `StageLoad` (its batched methods within
    their `max_batch_size`, or `cap` when smaller, waiting their `batch_wait_timeout_s`)."""
    batches: dict[str, dict[str | None, int]] = {}
    waits: dict[str, dict[str | None, float]] = {}
    for node in state.graph.nodes:
        if not isinstance(node, CallNode):
            continue
        spec = batch_spec(node.call.function)
        name = state.name_of(node.call.group)
        method = node.call.method or ("__call__" if _is_class(state, name) else None)
        if spec is not None:
            batches.setdefault(name, {})[method] = min(spec.max_batch_size,
                                                       cap or spec.max_batch_size)
            waits.setdefault(name, {})[method] = spec.batch_wait_timeout_s * 1000
    loads = {}
    for name in state.stage_names():
        methods = profile.methods_of(name)
        if methods:
            loads[name] = stage_load(name, methods, profile.payloads, batches.get(name, {}),
                                     waits.get(name, {}))
    return loads


def _is_class(state: CompileState, name: str) -> bool:
    return any(state.name_of(group) == name and not spec_of_group(group).is_function
               for group in state.groups)


def planned_sizing(state: CompileState, loads: Mapping[str, StageLoad], rps: float,
                   utilisation: float, fused: frozenset[str] = frozenset()
                   ) -> dict[str, Sizing]:
    """Every profiled stage but the `fused` ones sized for `rps` (a light one as
    `Sizing.light`: one replica, no CPUs reserved); a GPU stage keeps its CPUs and one
    thread count."""
    sizing = {}
    for name, load in loads.items():
        if name in fused:
            continue
        facts = state.resources[name]
        if facts.uses_gpu:
            sizing[name] = size_stage(load, rps, utilisation, max_threads=1)
            continue
        sized = size_stage(load, rps, utilisation)
        light = sized.cpus == 1 and _light(state, load)
        sizing[name] = Sizing(1, 1, light=True) if light else sized
    return sizing


def shortfall(state: CompileState, loads: Mapping[str, StageLoad], budget: Budget,
              rps: float, utilisation: float, fused: frozenset[str] = frozenset()
              ) -> str | None:
    """Why `rps` does not fit the budget at `utilisation` with the `fused` stages in the
    driver: 'cpus', 'gpus', 'work' (the CPUs' work, Serve's included) or 'driver'; None
    when it fits."""
    sizing = planned_sizing(state, loads, rps, utilisation, fused)
    driver = driver_sizing(loads, fused, sizing, rps, utilisation) if fused else None
    reserved = reserved_total(state, sizing, fused, driver)
    if reserved > budget.cpus + 1e-9:
        return "cpus"
    if budget.gpus is not None and _gpus_needed(state, sizing) > budget.gpus + 1e-9:
        return "gpus"
    hops, work = hops_and_fused_work(loads, served_stages(sizing))
    if rps > utilisation * cpu_bound_rps(budget.cpus, list(loads.values()), hops) + 1e-9:
        return "work"
    if driver is None and not budget.driver_fixed and _driver_replicas(
            rps, utilisation, hops, work) > max(1, math.floor(budget.cpus)):
        return "driver"
    return None


def _light(state: CompileState, load: StageLoad) -> bool:
    """A stage light enough to run in the driver in any layout (as `planned_sizing` keeps
    it, at one replica): under `LIGHT_WORK_MS` a request, not batched."""
    return load.work(1) <= LIGHT_WORK_MS and not batched(state, load.stage)


def _gpus_needed(state: CompileState, sizing: Mapping[str, Sizing]) -> float:
    return sum(sizing[name].replicas * (state.resources[name].gpus or 0.0) for name in sizing)


def _driver_replicas(rps: float, utilisation: float, hops: float, fused: float) -> int:
    """Driver replicas for `rps`: each serves `1000 / driver_ms` requests a second."""
    return max(1, math.ceil(rps * driver_ms(hops, fused) / (1000.0 * utilisation) - 1e-9))


def _most_throughput(state: CompileState, loads: Mapping[str, StageLoad], budget: Budget,
                     layouts: list[frozenset[str]]) -> CapacityDecision:
    """The most rps the budget serves at full utilisation, and the sizing for it: the split
    layout's, or that of one of the fused `layouts` where it serves more
    (`capacity_layout`)."""
    split = _most_in(state, loads, budget, frozenset())
    return best_layout(split, [_most_in(state, loads, budget, fused) for fused in layouts])


def _most_in(state: CompileState, loads: Mapping[str, StageLoad], budget: Budget,
             fused: frozenset[str]) -> CapacityDecision:
    """One layout's most rps at full utilisation, its spare CPUs spent."""
    upper = cpu_bound_rps(budget.cpus, list(loads.values()), 0.0)
    best = most_rps(lambda rps: shortfall(state, loads, budget, rps, 1.0, fused) is None,
                    upper)
    return spend_spare(state, _decision(state, loads, budget, None, best, 1.0, fused))


def _decision(state: CompileState, loads: Mapping[str, StageLoad], budget: Budget,
              target: Target | None, rps: float, utilisation: float,
              fused: frozenset[str] = frozenset()) -> CapacityDecision:
    sizing = planned_sizing(state, loads, rps, utilisation, fused)
    common = {"loads": dict(loads), "sizing": sizing, "rps": rps, "utilisation": utilisation,
              "budget": budget, "target": target}
    if fused:
        driver = driver_sizing(loads, fused, sizing, rps, utilisation)
        return with_waits(CapacityDecision(**common, driver_replicas=driver.replicas,
                                           fused=fused, driver_threads=driver.threads))
    hops, work = hops_and_fused_work(loads, served_stages(sizing))
    replicas = 1 if budget.driver_fixed else min(
        _driver_replicas(rps, utilisation, hops, work), max(1, math.floor(budget.cpus)))
    return with_waits(CapacityDecision(**common, driver_replicas=replicas))


def _for_target(state: CompileState, loads: Mapping[str, StageLoad], budget: Budget,
                target: Target, layouts: list[frozenset[str]],
                capped: Callable[[int], Mapping[str, StageLoad]] | None = None
                ) -> CapacityDecision:
    """The sizing at `TARGET_UTILISATION`, or lower until the predicted p99 meets the
    target's, then with smaller batches (`capped(size)`: the loads with every batch at most
    `size`, the profiled sizes tried largest first); the split layout unless only a fused
    one of `layouts` reaches the target (the first that does: fewest stages fused); a
    `CapacityError` when the budget cannot."""
    fused: frozenset[str] = frozenset()
    missing = shortfall(state, loads, budget, target.rps, TARGET_UTILISATION)
    if missing is not None:
        fused = next((each for each in layouts if shortfall(
            state, loads, budget, target.rps, TARGET_UTILISATION, each) is None), fused)
        missing = None if fused else missing
    if missing is not None:
        raise short_error(state, loads, budget, target, missing, layouts)
    for utilisation in UTILISATIONS:
        if shortfall(state, loads, budget, target.rps, utilisation, fused) is not None:
            break
        decision = _decision(state, loads, budget, target, target.rps, utilisation, fused)
        if target.p99_ms is None or predicted_p99(state, decision) <= target.p99_ms:
            return only_fused(decision, target.rps) if fused else decision
    for size in smaller_batches(loads) if capped is not None else ():
        try:
            return _for_target(state, capped(size), budget, target, layouts)
        except CapacityError:
            continue
    raise p99_error(state, loads, budget, target, fused)


def smaller_batches(loads: Mapping[str, StageLoad]) -> list[int]:
    """The profiled batch sizes below some stage's planned batch, largest first."""
    return sorted({size for load in loads.values() for size, _ in load.batch_ms
                   if size < load.batch}, reverse=True)


def short_error(state: CompileState, loads: Mapping[str, StageLoad], budget: Budget,
                target: Target, missing: str, layouts: list[frozenset[str]] | None = None
                ) -> CapacityError:
    """The `CapacityError` for what ran short (`shortfall`) in the split layout, with the
    most this cluster serves at the target's utilisation in either layout."""
    utilisation = TARGET_UTILISATION
    best = max(most_rps(lambda rps, layout=layout: shortfall(  # type: ignore[misc]
        state, loads, budget, rps, utilisation, layout) is None, target.rps)
        for layout in {frozenset(), *(layouts or [])})
    sizing = planned_sizing(state, loads, target.rps, utilisation)
    hops, fused = hops_and_fused_work(loads, served_stages(sizing))
    if missing in ("cpus", "gpus"):
        gpu = missing == "gpus"
        name = max(sizing, key=lambda each: (_gpus_needed(state, {each: sizing[each]}) if gpu
                                             else reserved_cpus(state, each, sizing)))
        sized, facts = sizing[name], state.resources[name]
        neck = Bottleneck(name, sized.replicas, (facts.gpus or 0.0) if gpu else sized.threads,
                          loads[name].replica_rps(sized.threads))
        if gpu:
            cluster = state.cluster
            return errors.gpus_short(target, _gpus_needed(state, sizing), budget.gpus or 0,
                                     None if cluster is None else cluster.smallest_gpu_memory,
                                     neck, best)
        reserved = sum(reserved_cpus(state, each, sizing) for each in state.stage_names())
        busy = target.rps * (sum(load.work(1) for load in loads.values()) + overhead_ms(hops)) \
            / (1000 * utilisation)  # what the CPUs' bound asks too, once that many are there
        need = max(reserved, math.ceil(busy - 1e-9))
        return errors.cpus_short(target, need, budget.cpus, utilisation, neck, best)
    if missing == "work":
        name = max(loads, key=lambda each: loads[each].work(1))
        return errors.work_short(target, sum(load.work(1) for load in loads.values()),
                                 overhead_ms(hops), budget.cpus, utilisation, name,
                                 loads[name].work(1), best)
    return errors.driver_short(target, _driver_replicas(target.rps, utilisation, hops, fused),
                               budget.cpus, f"{state.graph.name}_driver",
                               driver_ms(hops, fused), best)


def p99_error(state: CompileState, loads: Mapping[str, StageLoad], budget: Budget,
              target: Target, fused: frozenset[str] = frozenset()) -> CapacityError:
    """The p99 target is below what the stages take even at the lowest utilisation tried."""
    low = _decision(state, loads, budget, target, target.rps, UTILISATIONS[-1], fused)
    each = stage_p99s(low)
    name = max(each, key=lambda key: each[key])
    sized = low.sized(name)
    _, took = loads[name].call_at(target.rps * loads[name].calls / sized.replicas,
                                  sized.threads)
    return errors.p99_out_of_reach(target, critical_p99(state, each), name, each[name], took,
                                   loads[name].wait_ms)


def stage_p99s(decision: CapacityDecision) -> dict[str, float]:
    """Each profiled stage's p99 at the load sized for (see `capacity`)."""
    return {name: load.p99_ms(decision.sized(name).threads, decision.sized(name).replicas,
                              decision.rps) for name, load in decision.loads.items()}


def predicted_p99(state: CompileState, decision: CapacityDecision) -> float:
    """The pipeline's p99 at the load sized for: its stages' along its heaviest chain of
    calls (`critical_p99`)."""
    return critical_p99(state, stage_p99s(decision))


def _cpus(state: CompileState, profile: Profile) -> float:
    cluster = state.cluster
    return float(profile.machine.cpus) if cluster is None or cluster.cpus is None \
        else float(cluster.cpus)


def _gpus(state: CompileState) -> int | None:
    return None if state.cluster is None else state.cluster.gpus


def _driver_fixed(state: CompileState) -> bool:
    return replicas_fixed(state.graph.driver_options)

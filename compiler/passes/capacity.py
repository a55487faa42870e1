"""The capacity pass: replicas, CPUs (so threads), request limits and autoscaling for each
stage, from a profile, to serve a target load on the fewest CPUs the cluster spec allows.

It runs after resources and before pack (so the packer places what it decided) when
`sg.compile` is given a profile. With a `Target` it sizes every profiled stage to run at
`TARGET_UTILISATION` at the target's rps, lowering the utilisation in steps until the
predicted p99 meets `p99_ms`; without one it finds, by bisection, the most requests a second
the cluster serves and sizes the stages for that at full utilisation. The arithmetic is in
`compiler.capacity`. What it decides it writes as options (`num_replicas` or an
`autoscaling_config`, `ray_actor_options.num_cpus`, `max_ongoing_requests`) and recomputes the
stage's `StageResources` with `stage_resources`, the one place they are worked out, so the
packer, fusion, lower, explain and the Serve config read the planned facts like any other.

Light stages (one replica of one CPU serves the load, under `LIGHT_WORK_MS` a request, no
batching, no GPU) stay one replica
reserving no CPU (their work counts in the CPUs' bound), so the fuse pass can still run them
in the driver. The driver gets the replicas its share of
Serve's work needs (unless `sg.Graph(driver=...)` sets them). A load the cluster cannot serve
raises `CapacityError` naming the bottleneck stage and what it would need. The predictions
(`predict`, run once fusion has decided which stages run in the driver) go into the plan.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from ...dag import CallNode, batch_spec
from ...errors import CapacityError, CompileError
from ..capacity import (
    TARGET_UTILISATION,
    Sizing,
    StageLoad,
    cpu_bound_rps,
    driver_ms,
    grown,
    most_rps,
    overhead_ms,
    size_stage,
    stage_load,
)
from ..profile import Profile, Target
from ..state import CompileState, spec_of_group
from . import capacity_errors as errors
from .capacity_errors import Bottleneck
from .capacity_options import (
    Budget,
    CapacityDecision,
    apply,
    batched,
    hops_and_fused_work,
    reserved_cpus,
    served_stages,
)

PASS = "capacity"
LIGHT_WORK_MS = 1.0  # a stage doing less a request may run in the driver's event loop
UTILISATIONS = (TARGET_UTILISATION, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)  # tried for a p99 target


def capacity_pass(state: CompileState, profile: Profile, target: Target | None
                  ) -> tuple[CompileState, CapacityDecision]:
    """The state with the planned options and facts, and the decision `predict` reads once
    the fuse pass has run (see the module docstring)."""
    loads = profiled_loads(state, profile)
    if not loads:
        raise CompileError(
            f"the profile of {profile.pipeline!r} has no stage of this graph: its stages are "
            f"{', '.join(s.label for s in profile.stages) or 'none'}",
            pass_name=PASS, hint="profile this graph: sg.profile(graph, payloads)")
    budget = Budget(cpus=_cpus(state, profile), gpus=_gpus(state),
                    driver_fixed=_driver_fixed(state))
    if target is None:
        decision = _most_throughput(state, loads, budget)
    else:
        decision = _for_target(state, loads, budget, target)
    return apply(state, decision), decision


def profiled_loads(state: CompileState, profile: Profile) -> dict[str, StageLoad]:
    """Each deployment some payload called, as a `StageLoad` (its batched methods at their
    `max_batch_size`, waiting their `batch_wait_timeout_s`)."""
    batches: dict[str, dict[str | None, int]] = {}
    waits: dict[str, dict[str | None, float]] = {}
    for node in state.graph.nodes:
        if not isinstance(node, CallNode):
            continue
        spec = batch_spec(node.call.function)
        name = state.name_of(node.call.group)
        method = node.call.method or ("__call__" if _is_class(state, name) else None)
        if spec is not None:
            batches.setdefault(name, {})[method] = spec.max_batch_size
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
                   utilisation: float) -> dict[str, Sizing]:
    """Every profiled stage sized for `rps` (a light one as `Sizing.light`: one replica, no
    CPUs reserved); a GPU stage keeps its CPUs and one thread count."""
    sizing = {}
    for name, load in loads.items():
        facts = state.resources[name]
        if facts.uses_gpu:
            sizing[name] = size_stage(load, rps, utilisation, max_threads=1)
            continue
        sized = size_stage(load, rps, utilisation)
        light = sized.cpus == 1 and load.work(1) <= LIGHT_WORK_MS and not batched(state, name)
        sizing[name] = Sizing(1, 1, light=True) if light else sized
    return sizing


def shortfall(state: CompileState, loads: Mapping[str, StageLoad], budget: Budget,
              rps: float, utilisation: float) -> str | None:
    """Why `rps` does not fit the budget at `utilisation`: 'cpus', 'gpus', 'work' (the CPUs'
    work, Serve's included) or 'driver'; None when it fits."""
    sizing = planned_sizing(state, loads, rps, utilisation)
    reserved = sum(reserved_cpus(state, name, sizing) for name in state.stage_names())
    if reserved > budget.cpus + 1e-9:
        return "cpus"
    if budget.gpus is not None and _gpus_needed(state, sizing) > budget.gpus + 1e-9:
        return "gpus"
    hops, fused = hops_and_fused_work(loads, served_stages(sizing))
    if rps > utilisation * cpu_bound_rps(budget.cpus, list(loads.values()), hops) + 1e-9:
        return "work"
    if not budget.driver_fixed and _driver_replicas(rps, utilisation, hops, fused) > max(
            1, math.floor(budget.cpus)):
        return "driver"
    return None


def _gpus_needed(state: CompileState, sizing: Mapping[str, Sizing]) -> float:
    return sum(sizing[name].replicas * (state.resources[name].gpus or 0.0) for name in sizing)


def _driver_replicas(rps: float, utilisation: float, hops: float, fused: float) -> int:
    """Driver replicas for `rps`: each serves `1000 / driver_ms` requests a second."""
    return max(1, math.ceil(rps * driver_ms(hops, fused) / (1000.0 * utilisation) - 1e-9))


def _most_throughput(state: CompileState, loads: Mapping[str, StageLoad],
                     budget: Budget) -> CapacityDecision:
    """The most rps the budget serves at full utilisation, and the sizing for it."""
    upper = cpu_bound_rps(budget.cpus, list(loads.values()), 0.0)
    best = most_rps(lambda rps: shortfall(state, loads, budget, rps, 1.0) is None, upper)
    decision = _decision(state, loads, budget, None, best, 1.0)
    return dataclasses.replace(decision, sizing=spend_spare(state, decision))


def spend_spare(state: CompileState, decision: CapacityDecision) -> dict[str, Sizing]:
    """For the most throughput, the CPUs the sizing leaves go, one step at a time, to the
    CPU stage of its own serving the least (`capacity.grown`: a thread or a replica more).
    The CPUs' bound may still cap the pipeline, but a CPU left idle is throughput no plan
    can get back."""
    sizing, loads = dict(decision.sizing), decision.loads
    spare = decision.budget.cpus - sum(reserved_cpus(state, name, sizing)
                                       for name in state.stage_names())
    while True:
        own = [name for name in served_stages(sizing) if not state.resources[name].uses_gpu]
        if not own:
            return sizing
        name = min(own, key=lambda each: sizing[each].replicas
                   * loads[each].replica_rps(sizing[each].threads))
        now = sizing[name]
        step = grown(loads[name], now, spare)
        if step is None:
            return sizing
        spare -= step.cpus - now.cpus
        sizing[name] = step


def _decision(state: CompileState, loads: Mapping[str, StageLoad], budget: Budget,
              target: Target | None, rps: float, utilisation: float) -> CapacityDecision:
    sizing = planned_sizing(state, loads, rps, utilisation)
    hops, fused = hops_and_fused_work(loads, served_stages(sizing))
    replicas = 1 if budget.driver_fixed else min(
        _driver_replicas(rps, utilisation, hops, fused), max(1, math.floor(budget.cpus)))
    return CapacityDecision(loads=dict(loads), sizing=sizing, rps=rps, utilisation=utilisation,
                            budget=budget, target=target, driver_replicas=replicas)


def _for_target(state: CompileState, loads: Mapping[str, StageLoad], budget: Budget,
                target: Target) -> CapacityDecision:
    """The sizing at `TARGET_UTILISATION`, or lower until the predicted p99 meets the
    target's; a `CapacityError` when the budget cannot."""
    missing = shortfall(state, loads, budget, target.rps, TARGET_UTILISATION)
    if missing is not None:
        raise short_error(state, loads, budget, target, missing)
    for utilisation in UTILISATIONS:
        if shortfall(state, loads, budget, target.rps, utilisation) is not None:
            break
        decision = _decision(state, loads, budget, target, target.rps, utilisation)
        if target.p99_ms is None or predicted_p99(decision) <= target.p99_ms:
            return decision
    raise p99_error(state, loads, budget, target)


def short_error(state: CompileState, loads: Mapping[str, StageLoad], budget: Budget,
                target: Target, missing: str) -> CapacityError:
    """The `CapacityError` for what ran short (`shortfall`), with the most this cluster
    serves at the target's utilisation."""
    utilisation = TARGET_UTILISATION
    best = most_rps(lambda rps: shortfall(state, loads, budget, rps, utilisation) is None,
                    target.rps)
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
              target: Target) -> CapacityError:
    """The p99 target is below what the stages take even at the lowest utilisation tried."""
    low = _decision(state, loads, budget, target, target.rps, UTILISATIONS[-1])
    each = stage_p99s(low)
    name = max(each, key=lambda key: each[key])
    sized = low.sizing[name]
    _, took = loads[name].call_at(target.rps * loads[name].calls / sized.replicas,
                                  sized.threads)
    return errors.p99_out_of_reach(target, sum(each.values()), name, each[name], took,
                                   loads[name].wait_ms)


def stage_p99s(decision: CapacityDecision) -> dict[str, float]:
    """Each profiled stage's p99 at the load sized for (see `capacity`)."""
    return {name: load.p99_ms(decision.sizing[name].threads, decision.sizing[name].replicas,
                              decision.rps) for name, load in decision.loads.items()}


def predicted_p99(decision: CapacityDecision) -> float:
    """The pipeline's p99 at the load sized for: its stages', summed (see `capacity`)."""
    return sum(stage_p99s(decision).values())


def _cpus(state: CompileState, profile: Profile) -> float:
    cluster = state.cluster
    return float(profile.machine.cpus) if cluster is None or cluster.cpus is None \
        else float(cluster.cpus)


def _gpus(state: CompileState) -> int | None:
    return None if state.cluster is None else state.cluster.gpus


def _driver_fixed(state: CompileState) -> bool:
    own = state.graph.driver_options
    return own.num_replicas is not None or own.autoscaling_config is not None

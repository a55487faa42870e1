"""What a profile-planned plan is predicted to do: per stage (and the driver) its throughput
and how busy it runs at the load planned for, the bottleneck, and the pipeline's throughput
and p99 (the model is `compiler.capacity`'s). It runs after the fuse pass, which decides what
runs inside the driver: a fused stage's work is the driver's, and only calls to deployments
of their own cost a Serve hop. `with_predictions` puts them in the lowered plan."""

from __future__ import annotations

import math

from ..capacity import MAX_UTILISATION, P99_FACTOR, Sizing, driver_ms
from ..pipeline import CompiledPipeline
from ..profile import CapacityPlan, StagePrediction
from ..state import CompileState
from .capacity_options import CapacityDecision, critical_p99, rates
from .resources import replica_range

CPUS_BOTTLENECK = "the cluster's CPUs"


def with_predictions(plan: CompiledPipeline, state: CompileState,
                     decision: CapacityDecision) -> CompiledPipeline:
    """The lowered `plan` with its predictions."""
    return plan.model_copy(update={"capacity": predict(state, decision)})


def served_sizes(state: CompileState, decision: CapacityDecision) -> dict[str, Sizing]:
    """The replicas and threads of each profiled stage with a deployment of its own (not
    fused into the driver), as planned."""
    sizes = {}
    for name in decision.loads:
        if name in state.fusion and state.fusion[name].fused:
            continue
        facts = state.resources[name]
        sizes[name] = decision.sizing.get(name) or Sizing(
            facts.replicas.start, max(1, math.floor(facts.cpus + 1e-9)))
    return sizes


def predict(state: CompileState, decision: CapacityDecision) -> CapacityPlan:
    """The predictions of the plan `decision` sized, as `state` (after fusion) runs it."""
    loads = decision.loads
    sizes = served_sizes(state, decision)
    threads = decision.driver.threads
    driver = f"{state.graph.name}_driver"
    driver_replicas = replica_range(state.graph.driver_options).start
    found = rates(loads, sizes, driver_replicas, threads, decision.budget.cpus)
    throughput = {driver: found.driver}
    for name in loads:
        throughput[name] = found.stages.get(name, found.driver)
    cpu_bound = found.cpu_bound
    neck = min(throughput, key=lambda name: throughput[name])
    capacity = min(throughput[neck], cpu_bound)
    at = capacity if decision.target is None else decision.target.rps
    rows = []
    for name, load in loads.items():
        sized = sizes.get(name)
        rows.append(StagePrediction(
            stage=name, replicas=driver_replicas if sized is None else sized.replicas,
            cpus=0 if sized is None or sized.light else sized.threads, batch_size=load.batch,
            throughput_rps=throughput[name], utilisation=at / throughput[name],
            p99_ms=load.p99_ms(threads if sized is None else sized.threads,
                               driver_replicas if sized is None else sized.replicas, at),
            planned=name in decision.sizing or name in decision.fused,
            in_driver=sized is None, gpu_memory_bytes=decision.gpu_measured.get(name)))
    stages_p99 = critical_p99(state, {row.stage: row.p99_ms for row in rows})
    driver_busy = at / throughput[driver]
    own_ms = driver_ms(found.hops, 0.0)  # the fused stages' time is in their own rows
    driver_row = StagePrediction(
        stage=driver, replicas=driver_replicas, cpus=decision.driver_threads,
        throughput_rps=throughput[driver], utilisation=driver_busy,
        p99_ms=own_ms * P99_FACTOR / (1 - min(driver_busy, MAX_UTILISATION)),
        planned=driver_replicas > 1 or bool(decision.fused))
    rows.append(driver_row)
    return CapacityPlan(
        target=decision.target, cpus=decision.budget.cpus, capacity_rps=capacity, at_rps=at,
        p99_ms=stages_p99 + driver_row.p99_ms,
        bottleneck=CPUS_BOTTLENECK if cpu_bound < throughput[neck] else neck,
        cpu_bound_rps=cpu_bound, stages=rows, layout=decision.layout)

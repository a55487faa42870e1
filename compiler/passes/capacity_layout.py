"""The capacity pass's two layouts. *Split*: every heavy stage a deployment of its own, sized
on its own, each call to it one Serve call (`CALL_CPU_MS`). *Fused*: every profiled stage the
driver can run (`fuse.never_fused` says none of its reasons) runs inside the driver, whose
replicas are sized as one stage doing their work (`capacity.driver_load`); a request is then
one Serve call however many stage calls it makes, but those stages scale together.

For the most throughput the pass plans both and keeps the one the model says serves more
(`decision_rps`); for a target it keeps the split layout (each stage scales on its own, up to
the spare CPUs) unless only the fused one reaches the target. `spend_spare` gives the CPUs a
layout leaves to whichever of its CPU stages (the driver, in the fused layout) serves least.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ..capacity import Sizing, StageLoad, driver_load, grown, size_stage
from ..state import CompileState
from .capacity_options import (
    Budget,
    CapacityDecision,
    decision_rps,
    hops_and_fused_work,
    reserved_total,
    served_stages,
)
from .fuse import calls_by_group, never_fused

DRIVER = "the driver"  # spend_spare's key for the fused layout's driver


def plannable_into_driver(state: CompileState, loads: Mapping[str, StageLoad],
                          budget: Budget) -> frozenset[str]:
    """The profiled stages the fused layout may run in the driver: none when the user fixed
    the driver's replicas (its sizing is the layout's), else those no fusion rule keeps out
    (`fuse=False`, a GPU, a stream, multiplexing, a process of its own)."""
    if budget.driver_fixed:
        return frozenset()
    calls, streaming = calls_by_group(state)
    return frozenset(state.name_of(group) for group in state.groups
                     if state.name_of(group) in loads
                     and never_fused(state, group, calls.get(id(group), []), streaming) is None)


def driver_sizing(loads: Mapping[str, StageLoad], fused: frozenset[str],
                  sizing: Mapping[str, Sizing], rps: float, utilisation: float) -> Sizing:
    """The fused layout's driver: the fewest CPUs serving `rps` at `utilisation` doing the
    `fused` stages' work and its share of Serve's (calls to the stages `sizing` serves)."""
    hops, _ = hops_and_fused_work(loads, served_stages(sizing))
    return size_stage(the_driver_load(loads, fused, hops), rps, utilisation)


def the_driver_load(loads: Mapping[str, StageLoad], fused: frozenset[str],
                    hops: float) -> StageLoad:
    return driver_load([loads[name] for name in sorted(fused)], hops)


def spend_spare(state: CompileState, decision: CapacityDecision) -> CapacityDecision:
    """For the most throughput, the CPUs the sizing leaves go, one step at a time, to the
    CPU stage of its own serving the least (the fused layout's driver among them;
    `capacity.grown`: a thread or a replica more). The CPUs' bound may still cap the
    pipeline, but a CPU left idle is throughput no plan can get back."""
    sizing, loads = dict(decision.sizing), decision.loads
    driver = decision.driver if decision.fused else None
    hops, _ = hops_and_fused_work(loads, served_stages(sizing))
    own_loads = dict(loads)
    if decision.fused:
        own_loads[DRIVER] = the_driver_load(loads, decision.fused, hops)
    spare = decision.budget.cpus - reserved_total(state, sizing, decision.fused, driver)
    while True:
        own = {name: sizing[name] for name in served_stages(sizing)
               if not state.resources[name].uses_gpu}
        if driver is not None:
            own[DRIVER] = driver
        if not own:
            break
        name = min(own, key=lambda each: own[each].replicas
                   * own_loads[each].replica_rps(own[each].threads))
        step = grown(own_loads[name], own[name], spare)
        if step is None:
            break
        spare -= step.cpus - own[name].cpus
        if name == DRIVER:
            driver = step
        else:
            sizing[name] = step
    if driver is None:
        return dataclasses.replace(decision, sizing=sizing)
    return dataclasses.replace(decision, sizing=sizing, driver_replicas=driver.replicas,
                               driver_threads=driver.threads)


def better(split: CapacityDecision, fused: CapacityDecision | None) -> CapacityDecision:
    """The layout serving more (the split one on a tie), its choice explained."""
    if fused is None:
        return split
    split_rps, fused_rps = decision_rps(split), decision_rps(fused)
    if fused_rps <= split_rps:
        return split
    stages = ", ".join(sorted(fused.fused))
    return dataclasses.replace(fused, layout=(
        f"planned into the driver for throughput: {stages} there serve {fused_rps:.3g} "
        f"req/s, as deployments of their own {split_rps:.3g} (no Serve call per stage call)"))


def only_fused(decision: CapacityDecision, rps: float) -> CapacityDecision:
    """The fused layout chosen for a target the split one cannot reach, saying so."""
    stages = ", ".join(sorted(decision.fused))
    return dataclasses.replace(decision, layout=(
        f"planned into the driver: {rps:g} req/s is out of reach with {stages} as "
        "deployments of their own (each stage call a Serve call)"))

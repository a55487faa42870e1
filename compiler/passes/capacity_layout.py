"""The capacity pass's layouts. *Split*: every heavy stage a deployment of its own, sized on
its own, each call to it one Serve call (`CALL_CPU_MS`). *Fused*: a set of the profiled stages
the driver can run (`fuse.never_fused` says none of its reasons) runs inside the driver, whose
replicas are sized as one stage doing their work (`capacity.driver_load`); a call to one of
them is then no Serve call, but those stages scale together. The fused sets weighed are every
non-empty subset of those stages, fewest stages first (`fused_sets`; past `MAX_SUBSET_STAGES`
stages, all of them only).

For the most throughput the pass plans each layout and keeps the one the model says serves
most (`decision_rps`; on a tie, the one fusing fewest); for a target it keeps the split layout
(each stage scales on its own, up to the spare CPUs) unless only a fused one reaches the
target, and then the one fusing fewest stages that does. `spend_spare` gives the CPUs a layout
leaves to whichever of its CPU stages (the driver, in a fused layout) serves least.
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
MAX_SUBSET_STAGES = 6  # up to 63 fused sets are weighed; more stages: all of them only


def fused_sets(fusable: frozenset[str], light: frozenset[str] = frozenset()
               ) -> list[frozenset[str]]:
    """The fused layouts to weigh, fewest stages first (then by name): the `light` ones of
    `fusable` (which run in the driver in any layout) with every non-empty subset of the
    others, or with all of them only past `MAX_SUBSET_STAGES` such stages."""
    names = sorted(fusable - light)
    always = fusable & light
    if len(names) > MAX_SUBSET_STAGES or not names:
        return [fusable] if fusable else []
    subsets = [always | {name for bit, name in enumerate(names) if mask >> bit & 1}
               for mask in range(1, 2 ** len(names))]
    return sorted(subsets, key=lambda subset: (len(subset), sorted(subset)))


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


def best_layout(split: CapacityDecision, fused: list[CapacityDecision]) -> CapacityDecision:
    """The layout serving most (on a tie the earlier one: split, then fewer stages fused),
    its choice explained."""
    split_rps = decision_rps(split)
    best, best_rps = split, split_rps
    for decision in fused:
        rps = decision_rps(decision)
        if rps > best_rps * (1 + 1e-9):
            best, best_rps = decision, rps
    if best is split:
        return split
    return dataclasses.replace(best, layout=(
        f"planned into the driver for throughput: {', '.join(sorted(best.fused))} there "
        f"serve {best_rps:.3g} req/s, as deployments of their own {split_rps:.3g} (no Serve "
        f"call per stage call){_kept_out(best)}"))


def only_fused(decision: CapacityDecision, rps: float) -> CapacityDecision:
    """The fused layout chosen for a target the split one cannot reach, saying so."""
    stages = ", ".join(sorted(decision.fused))
    return dataclasses.replace(decision, layout=(
        f"planned into the driver: {rps:g} req/s is out of reach with {stages} as "
        f"deployments of their own (each stage call a Serve call){_kept_out(decision)}"))


def _kept_out(decision: CapacityDecision) -> str:
    """`; X stays a deployment of its own` for the heavy stages a fused set leaves out."""
    others = sorted(name for name, sized in decision.sizing.items() if not sized.light)
    if not others:
        return ""
    verb = "stays a deployment" if len(others) == 1 else "stay deployments"
    return f"; {', '.join(others)} {verb} of {'its' if len(others) == 1 else 'their'} own"

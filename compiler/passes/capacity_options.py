"""What the capacity pass decided (`CapacityDecision`), the facts about a sizing that the pass,
its predictions and its options all read (the CPUs it reserves, the stages served on their
own), and the options and `StageResources` it writes from a decision (`apply`)."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ...dag import CallNode, DeploymentOptions, batch_spec
from ..capacity import CONCURRENT_BATCHES, Sizing, StageLoad, cpu_bound_rps, driver_ms
from ..graphview import heaviest_path
from ..profile import Target
from ..state import BatchChoice, CompileState, spec_of_group
from .resources import stage_resources


@dataclasses.dataclass(frozen=True)
class Budget:
    """What the load is planned on: CPUs (the cluster spec's, else the profiled machine's),
    whole GPUs (None: not bounded), and whether the user fixed the driver's replicas."""

    cpus: float
    gpus: float | None
    driver_fixed: bool


@dataclasses.dataclass(frozen=True)
class CapacityDecision:
    """What the pass decided, for `predict`: each profiled stage's load and sizing (a light
    one's `Sizing.light`), the load and utilisation sized for, the driver's replicas. In the
    fused layout (`passes.capacity_layout`) the `fused` stages run in the driver, whose
    replicas reserve `driver_threads` CPUs each for them; `layout` says why it was chosen.
    `gpu_measured`: the GPU memory measured of each GPU stage whose share was checked."""

    loads: Mapping[str, StageLoad]
    sizing: Mapping[str, Sizing]
    rps: float
    utilisation: float
    budget: Budget
    target: Target | None
    driver_replicas: int
    fused: frozenset[str] = frozenset()
    driver_threads: int = 0
    layout: str = ""
    gpu_measured: Mapping[str, int] = dataclasses.field(default_factory=dict)  # bytes

    @property
    def driver(self) -> Sizing:
        """The driver's replicas and the CPUs (threads) each reserves."""
        return Sizing(self.driver_replicas, max(1, self.driver_threads),
                      light=not self.driver_threads)

    def sized(self, name: str) -> Sizing:
        """A profiled stage's replicas and threads: its own, or the driver's when fused."""
        return self.driver if name in self.fused else self.sizing[name]


def with_waits(decision: CapacityDecision) -> CapacityDecision:
    """The decision with each batched method's wait planned for the load it sized and the
    replicas serving it (`MethodBatch.planned_wait`)."""
    return dataclasses.replace(decision, loads={
        name: load.waiting(decision.rps, decision.sized(name).replicas)
        for name, load in decision.loads.items()})


def replicas_fixed(options: DeploymentOptions) -> bool:
    """The user set these replicas (`num_replicas` or autoscaling): the pass keeps them."""
    return options.num_replicas is not None or options.autoscaling_config is not None


def batched(state: CompileState, name: str) -> bool:
    """Some call of the stage goes to an `sg.batch` method."""
    return any(isinstance(node, CallNode) and state.name_of(node.call.group) == name
               and batch_spec(node.call.function) is not None for node in state.graph.nodes)


def hops_and_fused_work(loads: Mapping[str, StageLoad], served: set[str], threads: int = 1
                        ) -> tuple[float, float]:
    """Calls per request to deployments of their own (a map's: one per element), and the
    work of the stages that run in the driver (on its `threads` CPUs)."""
    hops = sum(load.calls for name, load in loads.items() if name in served)
    fused = sum(load.work(threads) for name, load in loads.items() if name not in served)
    return hops, fused


def reserved_total(state: CompileState, sizing: Mapping[str, Sizing],
                   fused: frozenset[str] = frozenset(), driver: Sizing | None = None) -> float:
    """CPUs the whole plan reserves: every stage's (`reserved_cpus`), the `fused` ones' as
    the `driver`'s replicas."""
    own = sum(reserved_cpus(state, name, sizing) for name in state.stage_names()
              if name not in fused)
    return own + (0.0 if driver is None else float(driver.cpus))


@dataclasses.dataclass(frozen=True)
class Rates:
    """What a plan serves, in pipeline requests a second: its driver (with the stages that
    run in it), each stage served on its own, and the CPUs' bound; `hops` the calls a request
    makes to deployments of their own."""

    driver: float
    stages: dict[str, float]
    cpu_bound: float
    hops: float

    @property
    def capacity(self) -> float:
        return min(self.driver, self.cpu_bound, *self.stages.values())


def rates(loads: Mapping[str, StageLoad], served: Mapping[str, Sizing], driver_replicas: int,
          threads: int, cpus: float) -> Rates:
    """The `Rates` of the stages `served` on their own as sized, the rest in `driver_replicas`
    driver replicas of `threads` CPUs, on `cpus` CPUs."""
    hops, fused_work = hops_and_fused_work(loads, set(served), threads)
    return Rates(driver=driver_replicas * 1000.0 / driver_ms(hops, fused_work),
                 stages={name: sized.replicas * loads[name].replica_rps(sized.threads)
                         for name, sized in served.items()},
                 cpu_bound=cpu_bound_rps(cpus, list(loads.values()), hops), hops=hops)


def decision_rps(decision: CapacityDecision) -> float:
    """The most a decision's plan serves, as the model predicts it (`predict`'s figure, with
    the light stages in the driver as the fuse pass will put them)."""
    served = {name: decision.sizing[name] for name in served_stages(decision.sizing)}
    return rates(decision.loads, served, decision.driver_replicas, decision.driver.threads,
                 decision.budget.cpus).capacity


def reserved_cpus(state: CompileState, name: str, sizing: Mapping[str, Sizing]) -> float:
    """CPUs a stage's replicas reserve at deploy time, as the pack pass counts them: as
    sized (a GPU stage: its declared CPUs a replica), else as declared (not profiled)."""
    facts = state.resources[name]
    if name not in sizing:
        return facts.cpus * facts.replicas.start
    if facts.uses_gpu:
        return sizing[name].replicas * facts.cpus
    return float(sizing[name].cpus)


def served_stages(sizing: Mapping[str, Sizing]) -> set[str]:
    """The stages planned as deployments of their own (the light ones may run in the driver:
    the predictions count what the fuse pass decided)."""
    return {name for name, sized in sizing.items() if not sized.light}


def apply(state: CompileState, decision: CapacityDecision) -> CompileState:
    """The decided options and their facts (`stage_resources`), and the driver's replicas."""
    options = dict(state.options)
    resources = dict(state.resources)
    heaviest = max(sorted(decision.fused), key=lambda name: decision.loads[name].work(1),
                   default=None)
    for group in state.groups:
        name = state.name_of(group)
        if name in decision.fused:
            chosen = fused_options(options[name].serve_options(),
                                   decision.driver_threads if name == heaviest else 0)
        elif name in decision.sizing:
            chosen = planned_options(options[name].serve_options(), state, name, decision)
        else:
            continue
        options[name] = type(options[name]).model_validate(
            {**chosen, **_own_options(options[name])})
        resources[name] = stage_resources(name, spec_of_group(group).site, options[name],
                                          state.cluster,
                                          models=state.resources[name].models_per_replica)
    graph = state.graph
    if not decision.budget.driver_fixed and decision.driver_replicas > 1:
        graph = copy.copy(graph)
        graph.driver_options = graph.driver_options.model_copy(
            update={"num_replicas": decision.driver_replicas})
    planned = {name: decision.layout for name in decision.fused}
    batches = {name: {each.method or "__call__": BatchChoice(
        each.size, CONCURRENT_BATCHES, each.wait_ms / 1000.0) for each in load.batches}
        for name, load in decision.loads.items() if load.batches}
    return dataclasses.replace(state, graph=graph, options=options, resources=resources,
                               planned_fusion=planned, planned_batches=batches)


def fused_options(serve: dict[str, Any], cpus: int) -> dict[str, Any]:
    """A stage planned into the driver: one replica per driver replica (it follows the
    driver's), reserving `cpus` there (the driver reserves what its fused stages do)."""
    serve.pop("num_replicas", None)
    serve.pop("autoscaling_config", None)
    serve["ray_actor_options"] = {**(serve.get("ray_actor_options") or {}), "num_cpus": cpus}
    return serve


def _own_options(options: Any) -> dict[str, Any]:
    """servegraph's own options (not Serve's), kept as the user set them."""
    return options.model_dump(include={"gpu_memory", "fuse", "timeout_s", "max_retries"},
                              exclude_none=True)


def planned_options(serve: dict[str, Any], state: CompileState, name: str,
                    decision: CapacityDecision) -> dict[str, Any]:
    """A planned stage's Serve options: its own, with replicas (fixed, or autoscaling from
    the target's count up to what the spare CPUs hold), CPUs and, for a stage neither
    batched nor mapped, a request limit of twice what it holds at the load."""
    sized, load = decision.sizing[name], decision.loads[name]
    facts = state.resources[name]
    if sized.light:
        serve["ray_actor_options"] = {**(serve.get("ray_actor_options") or {}), "num_cpus": 0}
        return serve
    serve.pop("num_replicas", None)
    serve.pop("autoscaling_config", None)
    actor = dict(serve.get("ray_actor_options") or {})
    if not facts.uses_gpu:
        actor["num_cpus"] = sized.threads
    serve["ray_actor_options"] = actor
    ongoing = decision.rps * load.calls / sized.replicas * load.call_ms[
        min(sized.threads, load.max_threads) - 1] / 1000
    if "max_ongoing_requests" not in serve and not batched(state, name) and load.calls <= 1:
        serve["max_ongoing_requests"] = max(5, 2 * math.ceil(ongoing))
    spare = decision.budget.cpus - sum(reserved_cpus(state, each, decision.sizing)
                                       for each in state.stage_names())
    grow = int(spare // (facts.cpus if facts.uses_gpu else sized.threads))
    if decision.target is None or grow < 1:
        serve["num_replicas"] = sized.replicas
        return serve
    serve["autoscaling_config"] = {
        "min_replicas": sized.replicas, "initial_replicas": sized.replicas,
        "max_replicas": sized.replicas + grow,
        "target_ongoing_requests": round(max(1.0, ongoing), 2)}
    return serve


def critical_p99(state: CompileState, stage_ms: Mapping[str, float]) -> float:
    """The pipeline's p99 from its stages' (`stage_ms`, by deployment name): their sum along
    the heaviest chain of calls, each call node counting its stage's p99 (parallel branches
    count once, a stage called twice in a row twice); unlisted stages count nothing."""
    def weight(node: Any) -> float:
        if not isinstance(node, CallNode):
            return 0.0
        return stage_ms.get(state.name_of(node.call.group), 0.0)

    return heaviest_path(state.graph.nodes, weight)

"""Capacity planning for an `sg.App`: each profiled graph planned to its own target, on what
the cluster has left once the application's other graphs have their stages.

`sg.compile(app, cluster=..., profile={"search": p1, "digits": p2}, target={"search":
sg.Target(rps=50), "digits": sg.Target(rps=200)})` (a sequence of profiles is matched to the
graphs by the pipeline each profile names). Graphs are planned in the application's order, each
by the capacity pass on the cluster's CPUs and GPUs less what the other graphs' stages reserve
(as declared, or as planned for a graph planned before it). Every graph is planned in the split
layout: the application's one ingress runs every graph's driver work, so no graph's heavy
stages are planned into it (light ones still run there, as the fuse pass decides).

A stage that several planned graphs share is one deployment: it gets the replicas each graph's
load needs, added, and the most threads any of them asks for, as a fixed count (its load is the
graphs' together, which no one graph's autoscaling range was sized for); each graph's prediction
shows its own share. A graph without a profile is compiled as declared and adds no planned load
to a stage it shares. The ingress gets the driver replicas the graphs' loads need, added,
unless `sg.App(driver=...)` sets them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from ...dag.app import App
from ...dag.site import user_site
from ...errors import BindError, CapacityError
from ..profile import Profile, Target
from ..state import CompileState, spec_of_group
from .capacity import capacity_pass
from .capacity_options import CapacityDecision, reserved_cpus
from .resources import stage_resources

HINT = ("sg.compile(app, cluster=..., profile={'search': sg.profile(search, payloads)}, "
        "target={'search': sg.Target(rps=50)})")


def app_planning(app: App, profile: object, target: object
                 ) -> tuple[dict[str, Profile], dict[str, Target]]:
    """`profile=` and `target=` of `sg.compile(app, ...)` by graph name, checked: a profile
    per planned graph (a mapping by graph name, or profiles naming their graphs), a target
    for each of them, none for a graph of another application."""
    graphs = list(app.graphs)
    if isinstance(profile, Profile):
        profile = [profile]
    if isinstance(profile, Mapping):
        profiles = dict(profile)
    elif isinstance(profile, Sequence) and not isinstance(profile, str):
        profiles = {getattr(each, "pipeline", None): each for each in profile}
    else:
        raise BindError(f"profile= for an sg.App needs profiles by graph name, got "
                        f"{type(profile).__name__}", site=user_site(), hint=HINT)
    if isinstance(target, Target) and len(profiles) == 1:
        target = {next(iter(profiles)): target}
    if not isinstance(target, Mapping):
        raise BindError("an sg.App is planned to a target per graph: target= needs "
                        f"sg.Target(...) by graph name, got {type(target).__name__}",
                        site=user_site(), hint=HINT)
    for what, found in (("profile", profiles), ("target", target)):
        for name, value in found.items():
            if name not in graphs:
                raise BindError(f"{what}= names graph {name!r}, which the app does not hold "
                                f"(its graphs: {', '.join(graphs)})", site=user_site(),
                                hint=HINT)
            kind = Profile if what == "profile" else Target
            if not isinstance(value, kind):
                raise BindError(f"{what}= for graph {name!r} needs an sg.{kind.__name__}, got "
                                f"{type(value).__name__}", site=user_site(), hint=HINT)
    for name in profiles:
        if name not in target:
            raise BindError(f"graph {name!r} has a profile but no target: an sg.App's graphs "
                            "share its cluster, so each is planned to its own load",
                            site=user_site(), hint=HINT)
    for name in target:
        if name not in profiles:
            raise BindError(f"graph {name!r} has a target but no profile: a target is planned "
                            "from measured stages", site=user_site(), hint=HINT)
    return profiles, dict(target)


def plan_app(states: Mapping[str, CompileState], shared: Mapping[str, list[str]],
             profiles: Mapping[str, Profile], targets: Mapping[str, Target]
             ) -> tuple[dict[str, CompileState], dict[str, CapacityDecision]]:
    """Each profiled graph's state planned (see the module docstring), and its decision."""
    planned = dict(states)
    decisions: dict[str, CapacityDecision] = {}
    for name in states:
        if name not in profiles:
            continue
        taken = taken_elsewhere(planned, decisions, name)
        try:
            planned[name], decisions[name] = capacity_pass(
                planned[name], profiles[name], targets[name], fuse=False, taken=taken)
        except CapacityError as exc:
            if taken == (0.0, 0.0):
                raise
            raise CapacityError(
                f"graph {name!r}, on what the app's other graphs leave of the cluster "
                f"({_taken_text(taken)} taken): {exc.message}", stage=exc.stage,
                site=exc.site, hint=exc.hint) from None
    return shared_sized(planned, decisions, shared), decisions


def _taken_text(taken: tuple[float, float]) -> str:
    cpus, gpus = taken
    text = f"{cpus:g} CPU{'' if cpus == 1 else 's'}"
    return text if not gpus else f"{text}, {gpus:g} GPU{'' if gpus == 1 else 's'}"


def taken_elsewhere(states: Mapping[str, CompileState],
                    decisions: Mapping[str, CapacityDecision], graph: str
                    ) -> tuple[float, float]:
    """The CPUs and GPUs that stages reserve beyond what `graph`'s own plan will: the other
    graphs' stages (a stage planned by some graphs: each one's replicas, else as declared,
    once) and, of the stages `graph` shares, what graphs planned before it gave them."""
    mine = set(states[graph].stage_names())
    cpus = gpus = 0.0
    stages = {stage for name, state in states.items() if name != graph
              for stage in state.stage_names()}
    for stage in stages:
        planners = [name for name in decisions if name != graph
                    and stage in decisions[name].sizing]
        holders = planners or ([] if stage in mine else [
            next(name for name, state in states.items()
                 if name != graph and stage in state.stage_names())])
        for name in holders:
            facts = states[name].resources[stage]
            cpus += reserved_cpus(states[name], stage, {})  # as planned, or declared
            gpus += (facts.gpus or 0.0) * facts.replicas.start
    return cpus, gpus


def shared_sized(states: dict[str, CompileState], decisions: Mapping[str, CapacityDecision],
                 shared: Mapping[str, list[str]]) -> dict[str, CompileState]:
    """Each shared stage that some graph planned, sized for all of them and the same in every
    graph's state (options, facts, planned batches)."""
    for stage, graphs in shared.items():
        planners = [name for name in graphs if name in decisions
                    and stage in decisions[name].sizing
                    and not decisions[name].sizing[stage].light]
        if not planners:
            continue
        first = states[planners[0]]
        own = first.options[stage]
        replicas = sum(decisions[name].sizing[stage].replicas for name in planners)
        update: dict[str, object] = {"num_replicas": replicas, "autoscaling_config": None}
        if not first.resources[stage].uses_gpu and own.ray_actor_options is not None:
            threads = max(decisions[name].sizing[stage].threads for name in planners)
            update["ray_actor_options"] = own.ray_actor_options.model_copy(
                update={"num_cpus": threads})
        options = own.model_copy(update=update)
        site = next(spec_of_group(group).site for group in first.groups
                    if first.name_of(group) == stage)
        facts = stage_resources(stage, site, options, first.cluster,
                                models=first.resources[stage].models_per_replica)
        batches = first.planned_batches.get(stage)
        for name in graphs:
            state = states[name]
            planned_batches = dict(state.planned_batches)
            if batches is not None:
                planned_batches[stage] = batches
            states[name] = dataclasses.replace(
                state, options={**state.options, stage: options},
                resources={**state.resources, stage: facts}, planned_batches=planned_batches)
    return states

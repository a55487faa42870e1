"""The fuse pass: light CPU stages run inside the driver replica instead of a deployment each.

Every edge between two Serve deployments costs a hop (milliseconds); a light stage (tokenize,
parse, vote, format) does not need an actor group of its own. A fused stage is built in the
driver replica and called there directly (no handle, no serialisation), with the concurrency
it had unfused: the driver's scheduling core still starts independent branches at once.

A stage is light when it needs no GPU, has no scaling of its own (`num_replicas` unset or 1,
no autoscaling), does not batch (`sg.batch`), neither makes nor reads a stream, sets no
options only its own process can honour (`runtime_env`, custom resources, `user_config`,
its own request limits), has no `check_health` (Serve checks a replica's health, not a
fused stage's), is not multiplexed (`sg.multiplexed`: Serve routes by model id), and does
not say `fuse=False`. `fuse=True` asks for fusion despite batching
or its own request limits (the driver then batches locally and its limits go); never
across a GPU, an autoscaled stage, `num_replicas` > 1, a stream or `fuse=False`.
`sg.compile(..., fuse=False)` turns the pass off. The decision for every stage, fused or not,
and why, is kept in the plan (`StagePlan.fused_into`, `StagePlan.fusion`) for `explain()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from ...dag import CallNode, batch_spec, health_check, multiplex_spec
from ...dag.nodes import find_nodes
from ..state import CompileState, FuseDecision, Group, spec_of_group
from .validate import is_stream

PASS = "fuse"
# options only a process of the stage's own can honour
_OWN_PROCESS = ("runtime_env", "resources", "memory", "accelerator_type")


def fuse_pass(state: CompileState, enabled: bool = True,
              shared: Mapping[str, Sequence[str]] | None = None) -> CompileState:
    """Decide, for every actor group, whether it is fused into the driver. `shared`: the
    stages an application's graphs share (`compiler.app`), by the graphs that call each; one
    deployment serves them all, so none is fused into one graph's driver. A stage the
    capacity pass planned into the driver (`state.planned_fusion`) is fused with its reason."""
    shared = shared or {}
    calls, streaming = calls_by_group(state)
    decisions = {}
    for group in state.groups:
        name = state.name_of(group)
        if not enabled:
            decision = FuseDecision(False, "fusion off: compiled with fuse=False")
        elif name in shared:
            decision = FuseDecision(False, f"shared by the graphs {', '.join(shared[name])}: "
                                           "one deployment serves them all")
        elif name in state.planned_fusion:
            decision = FuseDecision(True, state.planned_fusion[name])
        else:
            decision = decide(state, group, calls.get(id(group), []), streaming)
        decisions[name] = decision
    return dataclasses.replace(state, fusion=decisions)


def calls_by_group(state: CompileState) -> tuple[dict[int, list[CallNode]], set[int]]:
    """Each actor group's call nodes (by `id(group)`), and the ids of the nodes that stream."""
    calls: dict[int, list[CallNode]] = {}
    for node in state.graph.nodes:
        if isinstance(node, CallNode):
            calls.setdefault(id(node.call.group), []).append(node)
    streaming = {node.id for group in calls.values() for node in group if is_stream(node)}
    return calls, streaming


def decide(state: CompileState, group: Group, calls: list[CallNode],
           streaming: set[int]) -> FuseDecision:
    """The rules, hard ones first: those `fuse=True` cannot lift."""
    name = state.name_of(group)
    options = state.options[name]
    facts = state.resources[name]
    reason = never_fused(state, group, calls, streaming)
    if reason is not None:
        return FuseDecision(False, reason)
    if facts.replicas.autoscaling:
        return FuseDecision(False, "autoscaled: scales on its own")
    if facts.replicas.max > 1:
        return FuseDecision(False, f"num_replicas={facts.replicas.max}: scales on its own")
    soft = []
    if any(batch_spec(node.call.function) is not None for node in calls):
        soft.append("batches calls (sg.batch)")
    limits = [name for name in ("max_ongoing_requests", "max_queued_requests")
              if getattr(options, name) is not None]
    if limits:
        soft.append(f"sets its own {' and '.join(limits)}")
    if soft and options.fuse is not True:
        return FuseDecision(False, f"{'; '.join(soft)} (fuse=True would fuse it)")
    if soft:
        return FuseDecision(True, f"fuse=True, though it {'; '.join(soft)}")
    return FuseDecision(True, "fuse=True" if options.fuse else "light CPU stage")


def never_fused(state: CompileState, group: Group, calls: list[CallNode],
                streaming: set[int]) -> str | None:
    """Why the stage can never run in the driver, whatever its scaling (`fuse=False`, a
    model per replica, a GPU, a stream, a process of its own), or None: the rules the
    capacity pass also reads when it plans stages into the driver."""
    options = state.options[state.name_of(group)]
    if options.fuse is False:
        return "fuse=False"
    spec = spec_of_group(group)
    if not spec.is_function and multiplex_spec(spec.target) is not None:
        return ("multiplexed (@sg.multiplexed): Serve routes each model id to a replica that "
                "holds the model")
    facts = state.resources[state.name_of(group)]
    if facts.uses_gpu:
        share = "fraction unknown" if facts.gpus is None else f"{facts.gpus:g}"
        return f"needs a GPU ({share}): never fused across a GPU boundary"
    if any(is_stream(node) for node in calls):
        return "streams its output"
    if any(source.id in streaming for node in calls
           for source in find_nodes([node.args, node.kwargs])):
        return "reads a stream"
    actor = options.ray_actor_options
    own = [name for name in _OWN_PROCESS
           if actor is not None and getattr(actor, name, None) is not None]
    if options.user_config is not None:
        own.append("user_config")
    if health_check(spec.target) is not None:
        own.append("check_health")
    if options.placement_group_bundles is not None:
        own.append("placement_group_bundles")
    return f"needs a process of its own ({', '.join(own)})" if own else None

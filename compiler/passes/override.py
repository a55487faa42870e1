"""`override`: a plan with stages swapped for other code, or call nodes for constants.

A transformation of a compiled plan (plan in, new plan out; the original is untouched), so
every executor honours it the same way: the local runner and a Serve replica both build each
stage from the plan (`CompiledPipeline.build_stage`), and the scheduling core reads a `const`
node's value from the plan. What a key of `overrides` selects:

- a stage: its class or function (every stage made from it), or its deployment name. The
  value is a class (built with the stage's own constructor arguments), a function, or an
  object used as it is. The stand-in runs without the stage's GPU request (`num_gpus`,
  `accelerator_type` and `gpu_memory` are dropped): a fake of a GPU model runs on a CPU, and
  a plan compiled without a cluster spec, whose `gpu_memory` stage has no fraction yet, serves
  once that stage is faked.
- one method of a class stage, as the string `"Stage.method"`: the value is called with the
  call's arguments instead of that method; the stage's other methods stay the real ones.
- a call node: the node object the graph was built from, or `NodeKey("label")` (a call node's
  label, or its plan id such as `"n4"`): the value is the node's output, a constant. Nodes that
  then reach no output are dropped, and so are stages left without calls.
- a branch node (`sg.switch`, `when`, `split`, `fallback`), selected the same way, with a
  `Route` value (`servegraph.testing.route("fr")`): every request takes that arm, named by
  its case (a switch), True/False (a when), or its label (`then`, a split's variant,
  `default`: a fallback that never tries its primary, `primary`: one that never falls back).

A value with a `stand_in(like)` method (servegraph.testing's faults) gives a callable shaped
like the stage's own (sync, async or async generator) and carrying its annotations, so strict
mode checks what it returns against what the stage declares.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ...dag import DeploymentSpec, Node, matches_case, spec_of
from ...errors import CompileError
from ..pipeline import CompiledPipeline
from ..plan import GpuLayout, NodePlan, StagePlan
from ..templates import ValueEncoder, refs
from ..types import parameter_types, return_type
from .lower import import_path

PASS = "override"
_GPU_KEYS = ("num_gpus", "accelerator_type")


@dataclass(frozen=True)
class NodeKey:
    """Selects a call node by its label (`"Scorer.scale"`, `"map Scorer.score"`) or plan id."""

    label: str


@dataclass(frozen=True)
class Route:
    """An override's value forcing a branch node's arm (see the module docstring)."""

    arm: Any


class StageStandIn:
    """A class stage's stand-in: one callable per method, called with the call's arguments."""

    def __init__(self, name: str, methods: Mapping[str, Callable[..., Any]]) -> None:
        self.name = name
        self.__dict__.update(methods)

    def __repr__(self) -> str:
        return f"<stand-in for {self.name}>"


def override(plan: CompiledPipeline, overrides: Mapping[Any, Any]) -> CompiledPipeline:
    """A new plan with `overrides` applied (see the module docstring for keys and values)."""
    if not overrides:
        return plan
    objects = dict(plan.memory.objects)
    constants = list(plan.memory.constants)
    stages = {stage.name: stage for stage in plan.deployments}
    nodes = {node.id: node for node in plan.nodes}
    whole: dict[str, Any] = {}
    by_method: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if isinstance(key, (Node, NodeKey)):
            node = nodes[_node_id(plan, key, branch=isinstance(value, Route))]
            nodes[node.id] = _routed(node, value) if isinstance(value, Route) else \
                _constant(node, value, constants)
            continue
        for name, method in _stages_of(plan, key):
            if method is None:
                whole[name] = value
            else:
                by_method.setdefault(name, {})[method] = value
    for name in [*whole, *(n for n in by_method if n not in whole)]:
        stage = stages[name]
        if name in whole and name in by_method:
            raise CompileError(
                f"{name} is overridden whole and in its method "
                f"{', '.join(by_method[name])}", stage=name, pass_name=PASS, site=stage.site,
                hint="override the stage, or some of its methods, not both")
        target = _stage_replaced(plan, stage, whole[name]) if name in whole else \
            _methods_replaced(plan, stage, by_method[name])
        stages[name] = _swapped(stage, _register(objects, target), target)
    replaced = set(whole) | set(by_method)
    kept = _reaching_outputs(plan, nodes)
    in_use = {node.stage for node in kept if node.stage is not None}
    new = plan.model_copy(update={
        "nodes": kept,
        "deployments": [stage for name, stage in stages.items() if name in in_use],
        "passes": [*plan.passes, PASS],
        "gpu_layout": _without(plan.gpu_layout, replaced | (set(stages) - in_use)),
    })
    return new.with_memory(replace(plan.memory, objects=objects, constants=tuple(constants)))


def _node_id(plan: CompiledPipeline, key: Node | NodeKey, branch: bool = False) -> str:
    """The plan id of the call node (or, for a `Route`, the branch node) `key` selects."""
    calls = [node for node in plan.nodes if node.op in (("branch",) if branch else
                                                        ("call", "map"))]
    if isinstance(key, Node):
        found = plan.memory.node_ids.get(key.id)
        if found is None:
            raise CompileError(f"{key.label} is not a node of the pipeline {plan.name!r}",
                               stage=key.label, pass_name=PASS, site=key.site,
                               hint="override a node of the graph this plan was compiled from")
        matches = [node for node in calls if node.id == found]
    else:
        matches = [node for node in calls if key.label in (node.label, node.id)]
    if len(matches) != 1:
        labels = ", ".join(dict.fromkeys(node.label for node in calls)) or "none"
        kind = "branch node" if branch else "call node"
        what = f"no {kind}" if not matches else f"{len(matches)} {kind}s"
        raise CompileError(
            f"{what} of {plan.name!r} {'is' if not matches else 'are'} labelled "
            f"{getattr(key, 'label', key)!r}", pass_name=PASS,
            hint=f"pass the node object itself, or a plan id (n0, n1, ...); labels: {labels}")
    node = matches[0]
    if node.stream:
        raise CompileError(
            f"{node.label} streams: a constant cannot stand in for its chunks",
            stage=node.stage, pass_name=PASS, site=node.site,
            hint="override its stage with a fake async generator instead")
    return node.id


def _routed(node: NodePlan, route: Route) -> NodePlan:
    """The branch node with every request sent down the arm `route` names."""
    branch = node.branch
    assert branch is not None
    arm = route.arm
    if branch.kind == "switch":
        arm = next((label for case, label in zip(branch.cases, branch.arms)
                    if matches_case(case, arm)), arm)
    elif branch.kind == "when" and isinstance(arm, bool):
        arm = "then" if arm else "otherwise"
    if branch.kind == "shadow" or arm not in branch.arms:
        raise CompileError(
            f"{node.label} has no arm {route.arm!r} to force", stage=node.label,
            pass_name=PASS, site=node.site,
            hint="a shadow runs both of its arms always" if branch.kind == "shadow"
            else "route one of its arms: " + ", ".join(branch.arms))
    return node.model_copy(update={"branch": branch.model_copy(update={"forced": arm})})


def _constant(node: NodePlan, value: Any, constants: list[Any]) -> NodePlan:
    template = ValueEncoder({}, constants).encode(value)
    return node.model_copy(update={"op": "const", "args": [template], "kwargs": {},
                                   "stage": None, "method": None})


def _stages_of(plan: CompiledPipeline, key: Any) -> list[tuple[str, str | None]]:
    """(stage name, method or None) for each stage a key selects: a class or function selects
    every stage made from it."""
    names = [stage.name for stage in plan.deployments]
    if isinstance(key, str):
        if key in names:
            return [(key, None)]
        name, _, method = key.rpartition(".")
        if name in names and method in plan.stage(name).methods \
                and plan.stage(name).kind == "class":
            return [(name, method)]
        raise CompileError(
            f"{key!r} is no stage of {plan.name!r}, nor a method the pipeline calls on one",
            pass_name=PASS,
            hint=f"stages: {', '.join(names)}; a method: 'Stage.method'; a call node: "
            "the node object, or NodeKey('label') to replace its output with a constant")
    target = _spec_target(key)
    found = [stage.name for stage in plan.deployments
             if plan.resolve(stage.import_path or "") is target]
    if not found:
        raise CompileError(
            f"{_name(target)} is no stage of {plan.name!r}", pass_name=PASS,
            hint=f"override one of its stages: {', '.join(names)} (by class, function or "
            "name)")
    return [(name, None) for name in found]


def _stage_replaced(plan: CompiledPipeline, stage: StagePlan, value: Any) -> Any:
    original = plan.resolve(stage.import_path or "")
    if hasattr(value, "stand_in"):
        _check_timeout(stage, value)
        if stage.kind == "function":
            return _shaped(value.stand_in(original), original, is_method=False)
        return StageStandIn(stage.name, {
            method: _shaped(value.stand_in(getattr(original, method)),
                            getattr(original, method), is_method=True)
            for method in stage.methods})
    if stage.kind == "class":
        missing = [m for m in stage.methods if not callable(getattr(value, m, None))]
        if missing:
            raise CompileError(
                f"the override {_name(value)} has no method {', '.join(map(repr, missing))} "
                f"that the pipeline calls on {stage.name}", stage=stage.name, pass_name=PASS,
                site=stage.site, hint=f"give the fake the methods {', '.join(stage.methods)}")
    elif not callable(value):
        raise CompileError(f"the override {value!r} of the function stage {stage.name} is not "
                           "callable", stage=stage.name, pass_name=PASS, site=stage.site,
                           hint="give a function taking the stage's arguments")
    return value


def _methods_replaced(plan: CompiledPipeline, stage: StagePlan,
                      methods: Mapping[str, Any]) -> Any:
    """A subclass of the stage's class whose overridden methods are the values (called
    without `self`); it is built with the stage's constructor arguments as the class is."""
    original = plan.resolve(stage.import_path or "")
    body: dict[str, Any] = {"__module__": original.__module__,
                            "__qualname__": original.__qualname__}
    for method, value in methods.items():
        like = getattr(original, method)
        if hasattr(value, "stand_in"):
            _check_timeout(stage, value)
            value = _shaped(value.stand_in(like), like, is_method=True)
        elif not callable(value):
            raise CompileError(f"the override of {stage.name}.{method} is not callable",
                               stage=stage.name, pass_name=PASS, site=stage.site,
                               hint="give a function taking the method's arguments (no self)")
        body[method] = staticmethod(value)
    return type(original.__name__, (original,), body)


def _check_timeout(stage: StagePlan, value: Any) -> None:
    if getattr(value, "needs_timeout", False) and stage.timeout_s is None:
        raise CompileError(
            f"{value!r} on {stage.name}, which has no timeout_s: the request would wait "
            "forever", stage=stage.name, pass_name=PASS, site=stage.site,
            hint=f"declare a timeout: @sg.deployment(timeout_s=...) or "
            f"{stage.name}.options(timeout_s=1)")


def _shaped(fn: Callable[..., Any], like: Callable[..., Any], *, is_method: bool
            ) -> Callable[..., Any]:
    """`fn` with `like`'s signature and per-call annotations (a batched method's `list[T]`
    unwrapped to `T`), so strict mode checks a stand-in as it checks the stage."""
    try:
        signature = inspect.signature(like)
    except (TypeError, ValueError):
        return fn
    params = list(signature.parameters.values())[1 if is_method else 0:]
    annotations: dict[str, Any] = dict(parameter_types(like, is_method))
    produced = return_type(like)
    if produced is not Any:
        annotations["return"] = produced
    fn.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p.replace(annotation=annotations.get(p.name, p.empty)) for p in params],
        return_annotation=annotations.get("return", signature.empty))
    fn.__annotations__ = annotations
    return fn


def _swapped(stage: StagePlan, path: str, target: Any) -> StagePlan:
    """The stage running `target`: no GPU request, batching as the stand-in declares it."""
    options = dict(stage.options)
    actor = {k: v for k, v in (options.get("ray_actor_options") or {}).items()
             if k not in _GPU_KEYS}
    if actor:
        options["ray_actor_options"] = actor
    else:
        options.pop("ray_actor_options", None)
    batching = {method: plan for method, plan in stage.batching.items()
                if _batched(target, method, stage.kind)}
    resources = stage.resources.model_copy(
        update={"gpus": 0.0, "gpu_memory": None, "gpus_from_memory": False})
    return stage.model_copy(update={"import_path": path, "options": options,
                                    "resources": resources, "batching": batching})


def _batched(target: Any, method: str, kind: str) -> bool:
    from ...dag import batch_spec

    fn = target if kind == "function" else getattr(target, method, None)
    return batch_spec(getattr(fn, "__func__", fn)) is not None


def _register(objects: dict[str, Any], value: Any) -> str:
    """A key for `value` in the plan's objects: its import path when it has one."""
    named = value if hasattr(value, "__qualname__") and hasattr(value, "__module__") \
        else type(value)
    base = import_path(named) + ("" if named is value else "()")
    key, suffix = base, 1
    while key in objects and objects[key] is not value:
        key, suffix = f"{base}#{suffix}", suffix + 1
    objects[key] = value
    return key


def _name(value: Any) -> str:
    return getattr(value, "__qualname__", type(value).__qualname__)


def _reaching_outputs(plan: CompiledPipeline, nodes: dict[str, NodePlan]) -> list[NodePlan]:
    """The nodes the outputs still need (input nodes always: they validate the payload),
    in schedule order."""
    needed: set[str] = set()
    stack = list(refs(plan.outputs))
    while stack:
        node_id = stack.pop()
        if node_id in needed:
            continue
        needed.add(node_id)
        node = nodes[node_id]
        stack.extend(refs(*node.templates()))
    return [node for node in nodes.values() if node.id in needed or node.op == "input"]


def _without(layout: GpuLayout | None, stages: set[str]) -> GpuLayout | None:
    """The GPU layout less the replicas of `stages` (their stand-ins ask for no GPU)."""
    if layout is None or not stages:
        return layout
    gpus = []
    for gpu in layout.gpus:
        replicas = [r for r in gpu.replicas if r.stage not in stages]
        memory = [r.memory for r in replicas]
        gpus.append(gpu.model_copy(update={
            "replicas": replicas, "fraction_used": sum(r.gpus for r in replicas),
            "memory_used": sum(m for m in memory if m is not None)
            if gpu.memory_used is not None else None}))
    if not any(gpu.replicas for gpu in gpus):
        return None
    if not layout.bounded:
        gpus = [gpu for gpu in gpus if gpu.replicas]
    return layout.model_copy(update={
        "gpus": gpus, "headroom": [h for h in layout.headroom if h.stage not in stages]})


def _spec_target(key: Any) -> Any:
    spec = key if isinstance(key, DeploymentSpec) else spec_of(key)
    return spec.target if spec is not None else key

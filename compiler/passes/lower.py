"""The lower pass: one Serve deployment per actor group plus the ingress driver, and the
schedule of nodes the driver walks.

Serve options are chosen per stage role. The driver only awaits other deployments, so Serve's
default `max_ongoing_requests=5` would starve it (measured on 2 cores: a fan-in served 6 req/s
at the default, 58 req/s raised); it gets `DRIVER_MAX_ONGOING_REQUESTS` and no CPU of its own,
only the CPUs the stages fused into it declared. What the user gives in `sg.Graph(driver=...)`
(replicas, autoscaling, a limit) wins over these, and its facts come from `stage_resources`.
A batched stage takes every call in flight into its batch queue (`BATCHED_MAX_ONGOING_REQUESTS`,
or two batches' worth when that is more): a limit below them leaves calls in Serve's router,
which retries a full replica after a backoff of up to 0.5 s.
"""

from __future__ import annotations

import os
from typing import Any

from ...dag import (
    BranchNode,
    CallNode,
    ClassNode,
    DeploymentOptions,
    InputNode,
    Node,
    Op,
    SelectNode,
    batch_spec,
    multiplex_spec,
)
from ...dag.nodes import MapNode, find_nodes
from ...errors import CompileError
from ..graphview import schedule
from ..pipeline import CompiledPipeline
from ..plan import BatchPlan, BranchPlan, MapPlan, MultiplexPlan, NodePlan, PlanMemory, StagePlan
from ..state import BatchChoice, CompileState, spec_of_group
from ..templates import ValueEncoder
from ..types import type_name
from .resources import stage_resources
from .typecheck import TypeFacts
from .validate import is_stream

DEFAULT_MAX_MAP_WIDTH = 100_000  # elements one map takes per request (a 10 MiB body can
MAX_WIDTH_ENV = "SERVEGRAPH_MAX_MAP_WIDTH"  # hold a million: the work must be bounded)
DRIVER_MAX_ONGOING_REQUESTS = 1000
DRIVER_MAX_QUEUED_REQUESTS = 1000  # then Serve answers 503: memory stays bounded
# ... with `Retry-After`: Serve 2.60's proxy adds it only when this is set
DRIVER_BACKPRESSURE = {"status_code": 503, "retry_after_s": 1}
# Serve notices a dead replica only at its next health check (10 s by default). Requests that
# were being handed to a killed driver, or that arrive before its replacement runs, wait in
# the proxy for it: a 1 s check (one cheap actor call a second) cuts that wait by up to 10 s.
DRIVER_HEALTH_CHECK_PERIOD_S = 1.0
# A batched stage's default request limit: it takes every call in flight (a map's fan-out, one
# per document) into its batch queue. Below that, Serve's router holds the rest and, finding the
# replica full, retries after a backoff of up to 0.5 s: measured on the flagship (17 texts a
# request, concurrency 32, bench_fusion.py), 0.4 req/s at a limit of 64 against 9.2 at 1000.
BATCHED_MAX_ONGOING_REQUESTS = 1000
# A map's target takes its fan-out's calls at once: at Serve's default of 5 the router holds the
# rest and backs off (measured: 2,000 elements in 15.5 s at 5, 2.2 s at 1000).
MAPPED_MAX_ONGOING_REQUESTS = 1000


def lower(state: CompileState, passes: list[str], fuse: bool = True,
          id_prefix: str = "") -> CompiledPipeline:
    """`id_prefix` starts every node id: an application's graphs (`compiler.app`) share
    stage replicas, which tell their calls apart by node id."""
    graph = state.graph
    order = [node for node in schedule(graph.nodes) if not isinstance(node, ClassNode)]
    ids = {node.id: f"{id_prefix}n{index}" for index, node in enumerate(order)}
    objects: dict[str, Any] = {}
    constants: list[Any] = []
    encoder = ValueEncoder(ids, constants)

    calls_of: dict[int, list[CallNode]] = {}
    for node in graph.nodes:
        if isinstance(node, CallNode):
            calls_of.setdefault(id(node.call.group), []).append(node)
    driver_name = f"{graph.name}_driver"
    stages = [_stage_plan(state, group, calls_of.get(id(group), []), encoder, objects,
                          driver_name)
              for group in state.groups]
    facts = TypeFacts()  # each stage function's annotations read once
    branches = branch_plans(order)
    lazy = lazy_nodes(graph.outputs, order, branches)
    nodes = [_node_plan(state, node, ids, encoder, facts, branches, lazy) for node in order]
    input_model = None
    if graph.input is not None and graph.input.model is not None:
        input_model = import_path(graph.input.model)
        objects[input_model] = graph.input.model
    options = driver_options(graph.driver_options, fused_cpus(stages))
    weights = split_weights(branches.values())
    if weights:  # a running application's weights change with its driver's user_config
        options["user_config"] = {"splits": weights}
    driver = StagePlan(
        name=driver_name, role="driver", kind="driver", options=options,
        resources=stage_resources(driver_name, graph.site,
                                  DeploymentOptions.model_validate(options), state.cluster),
        site=str(graph.site),
    )
    plan = CompiledPipeline(
        name=graph.name, input_model=input_model, nodes=nodes,
        outputs=encoder.encode(graph.outputs), deployments=stages, driver=driver,
        passes=passes, cluster=state.cluster, gpu_layout=state.layout,
        fuse=fuse, timeout_s=graph.timeout_s,
    )
    return plan.with_memory(PlanMemory(objects=objects, constants=tuple(constants), graph=graph,
                                       node_ids=ids))


def driver_options(chosen: DeploymentOptions, cpus: float) -> dict[str, Any]:
    """The driver's Serve options: what the user chose (`sg.Graph(driver=...)`) over
    servegraph's defaults, `ray_actor_options` merged key by key (`cpus`: `fused_cpus`)."""
    own = chosen.serve_options()
    actor = {"num_cpus": cpus, **(own.pop("ray_actor_options", None) or {})}
    return {"max_ongoing_requests": DRIVER_MAX_ONGOING_REQUESTS,
            "max_queued_requests": DRIVER_MAX_QUEUED_REQUESTS,
            "backpressure_config": DRIVER_BACKPRESSURE,
            "health_check_period_s": DRIVER_HEALTH_CHECK_PERIOD_S,
            "ray_actor_options": actor, **own}


def branch_plans(order: list[Node]) -> dict[int, BranchPlan]:
    """Each branch node's plan, named uniquely: the user's `name=`, else its kind numbered
    in schedule order (`split`, `split_2`, ...)."""
    taken = {node.branching.name for node in order
             if isinstance(node, BranchNode) and node.branching.name is not None}
    plans = {}
    for node in order:
        if not isinstance(node, BranchNode):
            continue
        how = node.branching
        name, number = how.name, 1
        while name is None or (name in taken and how.name is None):
            name = how.kind if number == 1 else f"{how.kind}_{number}"
            number += 1
        taken.add(name)
        plans[node.id] = BranchPlan(
            kind=how.kind, name=name, arms=list(how.arms), cases=list(how.cases),
            default=how.default, weights=list(how.weights), sticky=how.sticky, seed=how.seed)
    return plans


def lazy_nodes(outputs: Any, order: list[Node], branches: dict[int, BranchPlan]) -> set[int]:
    """The nodes that run only when a branch takes an arm needing them: every node of the
    schedule (`order`: the graph's nodes but its class nodes, constructors, not steps) not
    reached from the outputs when walking past no branch's `lazy_arms`."""
    eager: set[int] = set()
    stack = list(find_nodes(outputs))
    while stack:
        node = stack.pop()
        if node.id in eager:
            continue
        eager.add(node.id)
        reads: list[Any] = node.upstream()  # a call's model id too
        if isinstance(node, BranchNode):
            skipped = {index + 1 for index in branches[node.id].lazy_arms}
            reads = [arg for index, arg in enumerate(node.args) if index not in skipped]
        stack.extend(find_nodes(reads))
    return {node.id for node in order} - eager


def split_weights(branches: Any) -> dict[str, dict[str, float]]:
    """Each split's weights by variant, as the driver's user_config holds them."""
    return {plan.name: dict(zip(plan.arms, plan.weights)) for plan in branches
            if plan.kind == "split"}


def fused_cpus(stages: list[StagePlan]) -> float:
    """The driver's CPUs: none for its own awaiting, plus what the stages fused into it
    declared (`num_cpus`); a fused stage that declared none is light and adds none."""
    total = sum((stage.options.get("ray_actor_options") or {}).get("num_cpus") or 0
                for stage in stages if stage.fused_into is not None)
    return round(total, 4) if total else 0


def import_path(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _stage_plan(state: CompileState, group: Any, calls: list[CallNode], encoder: ValueEncoder,
                objects: dict[str, Any], driver_name: str) -> StagePlan:
    """`calls`: the group's call nodes, in graph order (gathered once for every group)."""
    spec = spec_of_group(group)
    name = state.name_of(group)
    options = state.options[name]
    serve_options = options.serve_options()
    serve_options["name"] = name
    facts = state.resources[name]
    if facts.gpus_from_memory and facts.gpus is not None:  # the fraction derived
        actor = dict(serve_options.get("ray_actor_options") or {})
        actor["num_gpus"] = facts.gpus
        serve_options["ray_actor_options"] = actor
    methods = sorted({node.call.method or "__call__" for node in calls})
    batching = {}
    for node in calls:
        batch = batch_spec(node.call.function)
        if batch is not None:
            method = node.call.method or "__call__"
            declared = BatchChoice(batch.max_batch_size, batch.max_concurrent_batches,
                                   batch.batch_wait_timeout_s)
            size, concurrent, wait = state.planned_batches.get(name, {}).get(method, declared)
            concurrent = max(concurrent, batch.max_concurrent_batches)
            planned = (size, concurrent, wait) != declared
            batching[method] = BatchPlan(
                max_batch_size=size,
                declared_max_batch_size=batch.max_batch_size if planned else None,
                declared_max_concurrent_batches=batch.max_concurrent_batches if planned
                else None,
                declared_batch_wait_timeout_s=batch.batch_wait_timeout_s if planned else None,
                batch_wait_timeout_s=wait,
                max_concurrent_batches=concurrent,
                batch_size_fn=import_path(batch.batch_size_fn) if batch.batch_size_fn else None,
            )
    limit_reason = _request_limit(serve_options, options.max_ongoing_requests, batching,
                                  any(node.op is Op.MAP for node in calls))
    path = import_path(spec.target)
    objects[path] = spec.target
    loader = None if spec.is_function else multiplex_spec(spec.target)
    multiplexed = None if loader is None else MultiplexPlan(
        loader=loader.name, max_models_per_replica=loader.max_models_per_replica)
    decision = state.fusion.get(name)
    args, kwargs = (group.args, group.kwargs) if isinstance(group, ClassNode) else ((), {})
    return StagePlan(
        name=name, kind="function" if spec.is_function else "class",
        import_path=path, init_args=[encoder.encode(a) for a in args],
        init_kwargs={k: encoder.encode(v) for k, v in kwargs.items()},
        methods=methods, batching=batching, multiplexed=multiplexed, options=serve_options,
        resources=facts,
        fuse=options.fuse, timeout_s=options.timeout_s,
        max_retries=options.max_retries or 0, site=str(spec.site),
        limit_reason=limit_reason,
        fused_into=driver_name if decision is not None and decision.fused else None,
        fusion=decision.reason if decision is not None else "",
    )


def _request_limit(serve_options: dict[str, Any], declared: int | None,
                   batching: dict[str, BatchPlan], mapped: bool) -> str:
    """Raise the request limit of a batched stage, or of one a map calls, unless the user
    set it (`serve_options` changed in place); the reason, for `explain()`."""
    if declared is not None:
        return "declared"
    if batching:
        largest = max(b.max_batch_size * b.max_concurrent_batches for b in batching.values())
        serve_options["max_ongoing_requests"] = max(BATCHED_MAX_ONGOING_REQUESTS, 2 * largest)
        return "batched: takes every call in flight into its batch queue"
    if mapped:
        serve_options["max_ongoing_requests"] = MAPPED_MAX_ONGOING_REQUESTS
        return "a map's target: its fan-out is not held back in Serve's router"
    return ""


def _node_plan(state: CompileState, node: Node, ids: dict[int, str], encoder: ValueEncoder,
               facts: TypeFacts, branches: dict[int, BranchPlan], lazy: set[int]) -> NodePlan:
    produced = facts.output_type(node)
    common = {"id": ids[node.id], "label": node.label, "site": str(node.site),
              "output_type": None if produced is Any else type_name(produced),
              "lazy": node.id in lazy}
    if isinstance(node, InputNode):
        return NodePlan(op="input", **common)
    if isinstance(node, SelectNode):
        return NodePlan(op="select", args=[encoder.encode(node.args[0])],
                        select=(node.target.kind, node.target.key), **common)
    if isinstance(node, BranchNode):
        branch = branches[node.id]
        common["label"] = node.label if node.branching.name else branch.name  # split_2
        return NodePlan(op="branch", branch=branch, args=[encoder.encode(a) for a in node.args],
                        **common)
    assert isinstance(node, CallNode)
    return NodePlan(
        op="map" if node.op is Op.MAP else "call",
        stage=state.name_of(node.call.group), method=node.call.method,
        args=[encoder.encode(a) for a in node.args],
        kwargs={k: encoder.encode(v) for k, v in node.kwargs.items()},
        model_id=None if node.call.model_id is None else encoder.encode(node.call.model_id),
        stream=is_stream(node), fanout=_fanout(node), **common,
    )


def _fanout(node: CallNode) -> MapPlan | None:
    if not isinstance(node, MapNode):
        return None
    return MapPlan(chunk_size=node.chunk_size,
                   max_width=node.max_width or default_max_width())


def default_max_width() -> int:
    """The most elements a map takes per request unless it says otherwise: 100,000, or
    `SERVEGRAPH_MAX_MAP_WIDTH` (read when a graph is compiled, kept in its plan)."""
    raw = os.environ.get(MAX_WIDTH_ENV, "")
    if not raw:
        return DEFAULT_MAX_MAP_WIDTH
    if not raw.isdigit() or int(raw) < 1:
        raise CompileError(f"{MAX_WIDTH_ENV}={raw!r} is not a whole number >= 1",
                           pass_name="lower", hint=f"export {MAX_WIDTH_ENV}=100000")
    return int(raw)


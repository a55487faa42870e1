"""The Serve application of a plan, for `sg.serve` and for a `serve deploy` config.

`bind_app` binds the driver deployment holding a bound deployment per stage not fused into it;
`bind_front` binds an `sg.App`'s: its ingress in front of the union of its graphs' stages.
`app_builder` is the application builder a Serve config names (`APP_BUILDER` in
`compiler.emit.serve_config`): it compiles the graph (or app) again and binds it the same way.
"""

from __future__ import annotations

import copy
from typing import Any

from ray import serve

from ..compiler import ClusterSpec, CompiledPipeline, compile
from ..compiler.appplan import AppPlan
from ..compiler.emit.serve_config import find_graph_path
from ..compiler.passes.resources import require_gpu_fractions
from ..dag.app import App
from ..dag.loader import load_graph, load_target
from ..errors import PipelineError
from ..executors.ray.driver import PipelineDriver
from ..executors.ray.front import AppDriver
from ..executors.ray.replica import StageReplica


def bind_app(plan: CompiledPipeline, diagram_svg: bytes | None = None) -> Any:
    """The Serve application: a bound driver holding a bound deployment per stage not fused
    into the driver (the driver builds and calls the fused ones itself).

    Stages are bound largest GPU share first: Serve creates replicas in that order, so Ray's
    best-fit placement meets them in the decreasing order the pack pass planned with."""
    stages = {
        # a copy: Ray fills Serve's defaults into the ray_actor_options dict it is given
        stage.name: serve.deployment(StageReplica).options(**copy.deepcopy(stage.options))
        .bind(plan, stage.name)
        for stage in deploy_order(plan)
    }
    driver = serve.deployment(PipelineDriver).options(name=plan.driver.name,
                                                      **copy.deepcopy(plan.driver.options))
    return driver.bind(plan, stages, diagram_svg)


def bind_front(plan: AppPlan, diagrams: dict[str, bytes | None]) -> Any:
    """An `sg.App`'s Serve application: its ingress (`AppDriver`, the user's ASGI app in
    front, bound late) holding a bound deployment per stage of any of its graphs, a stage
    the graphs share once (its replicas serve each graph's calls: `plans_of`)."""
    stages = {
        stage.name: serve.deployment(StageReplica).options(**copy.deepcopy(stage.options))
        .bind(plan.plans_of(stage.name), stage.name)
        for stage in deploy_order(plan)
    }
    ingress = serve.deployment(serve.ingress()(AppDriver)).options(
        name=plan.driver.name, **copy.deepcopy(plan.driver.options))
    dependencies = plan.source.dependencies if plan.source is not None else []
    # the user's app by its `module:attr` where it has one (its replica imports it afresh),
    # else the object itself
    front = find_graph_path(plan.front) if plan.front is not None else None
    return ingress.bind(plan, stages, front or plan.front, diagrams, dependencies)


def deploy_order(plan: CompiledPipeline | AppPlan) -> list[Any]:
    """The deployed stages, whole GPUs and larger fractions first (stable otherwise)."""
    return sorted(plan.served(), key=lambda stage: -(stage.resources.gpus or 0.0))


def graph_diagrams(plan: AppPlan) -> dict[str, bytes | None]:
    """Each graph's SVG, by graph name (each route serves its own at `/-/graph.svg`)."""
    return {name: diagram_svg(graph) for name, graph in plan.plans.items()}


def diagram_svg(plan: CompiledPipeline) -> bytes | None:
    """The plan's SVG, or None where Graphviz is not installed."""
    from ..visualize import render

    try:
        return render(plan, format="svg")
    except PipelineError:
        return None


def app_builder(args: dict[str, Any]) -> Any:
    """The application builder a `serve deploy` config names (`plan.to_serve_config()`):
    `args.graph` is the graph's `module:attr` (`args.app`: an `sg.App`'s), `args.cluster` the
    cluster spec it was packed for, `args.fuse` False when it was compiled without fusion.
    Compiles it again, for the same cluster and fusion, and returns the Serve application."""
    cluster = args.get("cluster")
    spec = ClusterSpec.model_validate(cluster) if cluster else None
    fuse = bool(args.get("fuse", True))
    if "app" in args:
        app = compile(load_target(args["app"], App), cluster=spec, fuse=fuse)
        for graph in app.plans.values():
            require_gpu_fractions(graph, "serve")
        return bind_front(app, graph_diagrams(app))
    plan = compile(load_graph(args["graph"]), cluster=spec, fuse=fuse)
    require_gpu_fractions(plan, "serve")
    return bind_app(plan, diagram_svg(plan))

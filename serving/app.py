"""The Serve application of a plan, for `sg.serve` and for a `serve deploy` config.

`bind_app` binds the driver deployment holding a bound deployment per stage not fused into it;
`app_builder` is the application builder a Serve config names (`APP_BUILDER` in
`compiler.emit.serve_config`): it compiles the graph again and binds it the same way.
"""

from __future__ import annotations

import copy
from typing import Any

from ray import serve

from ..compiler import ClusterSpec, CompiledPipeline, compile
from ..compiler.passes.resources import require_gpu_fractions
from ..dag.loader import load_graph
from ..errors import PipelineError
from ..executors.ray.driver import PipelineDriver
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


def deploy_order(plan: CompiledPipeline) -> list[Any]:
    """The deployed stages, whole GPUs and larger fractions first (stable otherwise)."""
    return sorted(plan.served(), key=lambda stage: -(stage.resources.gpus or 0.0))


def diagram_svg(plan: CompiledPipeline) -> bytes | None:
    """The plan's SVG, or None where Graphviz is not installed."""
    from ..visualize import render

    try:
        return render(plan, format="svg")
    except PipelineError:
        return None


def app_builder(args: dict[str, Any]) -> Any:
    """The application builder a `serve deploy` config names (`plan.to_serve_config()`):
    `args.graph` is the graph's `module:attr`, `args.cluster` the cluster spec it was packed
    for, `args.fuse` False when it was compiled without fusion. Compiles the graph again, for
    the same cluster and fusion, and returns the Serve application."""
    cluster = args.get("cluster")
    plan = compile(load_graph(args["graph"]),
                   cluster=ClusterSpec.model_validate(cluster) if cluster else None,
                   fuse=bool(args.get("fuse", True)))
    require_gpu_fractions(plan, "serve")
    return bind_app(plan, diagram_svg(plan))

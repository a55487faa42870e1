"""`sg.serve`: deploy a pipeline on Ray Serve with its own diagram.

The public API renders the diagram and hands the driver the bytes, so `executors/` never
imports `visualize/`. Without Graphviz's `dot` program the service still runs, and
`GET <route>/-/graph.svg` is simply absent (`/-/plan` always answers).
"""

from __future__ import annotations

from typing import Any

from .compiler import ClusterSpec, CompiledPipeline, as_plan, compile
from .dag import Graph
from .errors import DeployError, PipelineError
from .executors.handle import PipelineHandle, serve_pipeline


def serve(graph_or_plan: Graph | CompiledPipeline, *, name: str | None = None,
          route_prefix: str | None = None, http_port: int | None = None,
          cluster: ClusterSpec | None = None) -> PipelineHandle:
    """Deploy on Ray Serve (embedded local Ray unless `RAY_ADDRESS` is set); see
    `executors.handle.serve_pipeline`. A graph is compiled for `cluster` (its GPU stages packed
    onto it); a plan was packed when it was compiled, so a `cluster` given with one must be
    the plan's own. Returns once every deployment is running."""
    if cluster is not None and isinstance(graph_or_plan, Graph):
        plan = compile(graph_or_plan, cluster=cluster)
    else:
        plan = as_plan(graph_or_plan)
    if cluster is not None and plan.cluster != cluster:
        packed = plan.cluster.describe() if plan.cluster is not None else "no cluster spec"
        raise DeployError(
            f"sg.serve got the plan {plan.name!r}, compiled for {packed}, with cluster="
            f"{cluster.describe()}; pass the graph to compile it for that cluster, or "
            f"sg.compile(graph, cluster=...) and serve that plan without cluster=")
    return serve_pipeline(plan, name=name, route_prefix=route_prefix, http_port=http_port,
                          diagram_svg=diagram_svg(plan))


def diagram_svg(plan: CompiledPipeline) -> bytes | None:
    """The plan's SVG, or None where Graphviz is not installed."""
    from .visualize import render

    try:
        return render(plan, format="svg")
    except PipelineError:
        return None


def application(args: dict[str, Any]) -> Any:
    """The application builder a `serve deploy` config names (`plan.to_serve_config()`):
    `args.graph` is the graph's `module:attr`, `args.cluster` the cluster spec it was packed
    for, `args.fuse` False when it was compiled without fusion. Compiles the graph again, for
    the same cluster and fusion, and returns the Serve application."""
    from .cli import load_graph
    from .executors.serve import build_app

    cluster = args.get("cluster")
    plan = compile(load_graph(args["graph"]),
                   cluster=ClusterSpec.model_validate(cluster) if cluster else None,
                   fuse=bool(args.get("fuse", True)))
    return build_app(plan, diagram_svg(plan))

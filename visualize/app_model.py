"""The diagram of an `sg.App`: every graph's diagram in one, a stage the graphs share drawn
once (one deployment: its cluster holds each graph's calls of it), each graph's input
labelled with its route and each its own output, and the application's one GPU layout."""

from __future__ import annotations

from dataclasses import replace

from ..compiler import CompiledPipeline
from ..compiler.appplan import AppPlan
from .model import Box, Diagram, LiveStatus, add_gpu_layout, diagram_of


def diagram_for(plan: CompiledPipeline | AppPlan, live: dict[str, LiveStatus] | None = None
                ) -> Diagram:
    """A pipeline's diagram, or an application's (see the module docstring)."""
    return app_diagram_of(plan, live) if isinstance(plan, AppPlan) else diagram_of(plan, live)


def app_diagram_of(plan: AppPlan, live: dict[str, LiveStatus] | None = None) -> Diagram:
    diagram = Diagram(title=plan.name)
    cluster_of: dict[str, str] = {}  # deployment -> its cluster's id in the app's diagram
    for index, (name, graph) in enumerate(plan.plans.items()):
        part = diagram_of(graph, live)  # type: ignore[arg-type]
        ids: dict[str, str] = {}
        for cluster in part.clusters:
            if cluster.deployment not in cluster_of:
                cluster_of[cluster.deployment] = f"c{len(diagram.clusters)}"
                diagram.clusters.append(replace(cluster, id=cluster_of[cluster.deployment]))
            ids[cluster.id] = cluster_of[cluster.deployment]
        out = f"g{index}_out"
        route = plan.route_of(name)
        for box in part.boxes:
            diagram.boxes.append(_box(box, ids, out, name, route))
        diagram.edges.extend((source, out if target == "out" else target, kind)
                             for source, target, kind in part.edges)
    add_gpu_layout(diagram, plan.gpu_layout,
                   [node for graph in plan.plans.values() for node in graph.nodes])
    return diagram


def _box(box: Box, clusters: dict[str, str], out: str, graph: str, route: str | None) -> Box:
    """One graph's box in the app's diagram: its cluster's app id; its input named by its
    route, its output by its graph."""
    cluster = clusters.get(box.cluster) if box.cluster is not None else None
    if box.id == "out":
        return replace(box, id=out, label=f"{graph}: output")
    if box.shape == "input":
        door = f"POST {route}" if route else f"{graph} (called by the ingress)"
        return replace(box, label=f"{door} · {box.label}", cluster=cluster)
    return replace(box, cluster=cluster)

"""An `sg.App` in this process: its ingress app with each graph on the local executor, for
`servegraph run --local` and for tests (an ASGI app: uvicorn, or httpx's ASGI transport).

A stage the graphs share is built once and called by each, as one deployment serves them
on Serve."""

from __future__ import annotations

from typing import Any

from ...compiler.app import CompiledApp
from ...web.front import Endpoint, front_app
from . import LocalExecutor
from .runner import build_instances


def local_front(plan: CompiledApp, diagrams: dict[str, bytes | None] | None = None) -> Any:
    """The app's ASGI app with every graph run in-process (see the module docstring)."""
    built: dict[str, Any] = {}
    endpoints = {}
    for name, graph in plan.plans.items():
        built |= build_instances(graph, [stage for stage in graph.deployments
                                         if stage.name not in built])
        executor = LocalExecutor(graph, instances={stage.name: built[stage.name]
                                                   for stage in graph.deployments})
        endpoints[name] = Endpoint(
            graph, executor.acall, diagram_svg=(diagrams or {}).get(name),
            stream=executor.astream if executor.program.streams else None)
    return front_app(plan.front, plan.routes, endpoints, title=plan.name,
                     dependencies=plan.source.dependencies if plan.source is not None else ())

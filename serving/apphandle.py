"""`AppHandle`: the client side of a served `sg.App`, one `PipelineHandle` per graph.

Every graph of the application runs in its one ingress deployment (`executors.ray.front`);
`handle["search"]` calls that graph there (`call`, `acall`, `stream`, `trace`, as for a
single pipeline), and `url` is the application's root, below which each route answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

from ray import serve
from ray.serve.handle import DeploymentHandle

from ..compiler import CompiledPipeline
from ..compiler.app import CompiledApp
from .handle import PipelineHandle


class AppHandle(Mapping[str, PipelineHandle]):
    """A served `sg.App`: its graphs' handles by graph name (see the module docstring)."""

    def __init__(self, handle: DeploymentHandle, plan: CompiledApp, name: str,
                 route_prefix: str, url: str) -> None:
        self.name = name
        self.plan = plan
        self.route_prefix = route_prefix
        self.url = url.rstrip("/")
        self._graphs = {
            graph: PipelineHandle(handle, name, route_prefix,
                                  self.url + (plan.route_of(graph) or ""),
                                  plan=own, graph=graph)
            for graph, own in plan.plans.items()}

    def __getitem__(self, graph: str) -> PipelineHandle:
        try:
            return self._graphs[graph]
        except KeyError:
            raise KeyError(f"app {self.name!r} has no graph {graph!r}; graphs: "
                           f"{', '.join(self._graphs)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._graphs)

    def __len__(self) -> int:
        return len(self._graphs)

    def shutdown(self, *, wait: bool = True) -> None:
        """Delete the application (every graph of it; Ray and Serve keep running)."""
        serve.delete(self.name, _blocking=wait)

    def __enter__(self) -> AppHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<AppHandle {self.name!r} at {self.url}: {', '.join(self._graphs)}>"


def attach(name: str, *, timeout_s: float = 60.0) -> PipelineHandle | AppHandle:
    """A handle to the running servegraph application `name`: a `PipelineHandle` for a
    pipeline, an `AppHandle` for an `sg.App` (whose ingress serves the app's plan)."""
    probe, text = PipelineHandle.served(name, timeout_s=timeout_s)
    if "plans" not in json.loads(text):
        probe.plan = CompiledPipeline.model_validate_json(text)
        return probe
    plan = CompiledApp.model_validate_json(text)
    return AppHandle(serve.get_app_handle(name), plan, name, probe.route_prefix, probe.url)

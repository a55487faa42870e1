"""The ingress deployment of an `sg.App` on Ray Serve: every graph's driver in one replica,
the user's ASGI app in front.

Each graph keeps its own `PipelineDriver` (its program, its runner over the stages'
handles, its fused stages, its HTTP endpoint), held here as plain objects: one deployment,
one hop, whichever graph a request runs. The user's app (FastAPI's) is Serve's ASGI app for
this deployment, bound late (`__serve_build_asgi_app__`, after `__init__`: Serve's
`serve.ingress()` without an app) so that the graphs are mounted on the copy of the app this
replica received (`web.front.front_app`). Handles reach a graph by name (`graph=`), as
`PipelineHandle` calls `run`, `trace` and `stream`; Serve's gRPC proxy reaches a graph's
`<Service>Call` and `<Service>Stream` (`CompiledApp.to_proto`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from ray import cloudpickle
from ray.serve.handle import DeploymentHandle

from ...compiler.appplan import AppPlan
from ...compiler.emit.proto import STREAM_METHOD, UNARY_METHOD, service_name
from ...dag.loader import load_target
from ...errors import InputError
from ...web.front import front_app
from ...web.grpc_ingress import GrpcIngress
from ..trace import Trace
from .driver import PipelineDriver
from .ray_private import serve_request_id


class AppDriver:
    """An `sg.App`'s ingress (see the module docstring). `front` is the user's ASGI app, or
    its `module:attr` (None: a FastAPI app of servegraph's own); `diagrams` each graph's SVG,
    by graph name; `dependencies` guard the graphs' routes (`sg.App(dependencies=...)`)."""

    def __init__(self, plan: AppPlan, handles: dict[str, DeploymentHandle], front: Any,
                 diagrams: dict[str, bytes | None], dependencies: list[Any]) -> None:
        self.app_plan = plan
        # the app to mount the graphs on: imported by its `module:attr`, or a copy of the
        # object (Serve scans the init arguments after __init__, for the handles they hold,
        # by pickling them, which a running app cannot be)
        self.front = load_target(front, object) if isinstance(front, str) else \
            cloudpickle.loads(cloudpickle.dumps(front))
        self.dependencies = dependencies
        self.drivers = {name: PipelineDriver(graph, handles, diagrams.get(name),
                                             route=plan.route_of(name) or "")
                        for name, graph in plan.plans.items()}
        self.grpc_methods = self._grpc_methods()

    def __serve_build_asgi_app__(self) -> Any:
        return front_app(self.front, self.app_plan.routes,
                         {name: driver.endpoint for name, driver in self.drivers.items()},
                         title=self.app_plan.name, dependencies=self.dependencies)

    def reconfigure(self, config: Any) -> None:
        """The ingress's user_config: each graph's split weights, by graph name."""
        for name, own in ((config or {}).get("graphs") or {}).items():
            self._driver(name).reconfigure(own)

    def _driver(self, graph: str | None) -> PipelineDriver:
        if graph is None and len(self.drivers) == 1:
            return next(iter(self.drivers.values()))
        driver = self.drivers.get(graph or "")
        if driver is None:
            raise InputError(f"app {self.app_plan.name!r} has no graph named {graph!r}; "
                             f"graphs: {', '.join(self.drivers)}")
        return driver

    async def run(self, payload: Any, request_id: str | None = None,
                  deadline_s: float | None = None, graph: str | None = None) -> Any:
        """One request of the graph named `graph`."""
        return await self._driver(graph).run(payload, request_id, deadline_s)

    async def trace(self, payload: Any, request_id: str | None = None,
                    deadline_s: float | None = None, graph: str | None = None) -> Trace:
        return await self._driver(graph).trace(payload, request_id, deadline_s)

    async def stream(self, payload: Any, request_id: str | None = None,
                     graph: str | None = None) -> AsyncIterator[Any]:
        async for chunk in self._driver(graph).stream(payload, request_id):
            yield chunk

    def __getattr__(self, method: str) -> Any:
        """A graph's gRPC method (`<Service>Call`, `<Service>Stream`: `CompiledApp.to_proto`),
        which Serve's gRPC proxy asks this ingress for by name."""
        found = self.__dict__.get("grpc_methods", {}).get(method)
        if found is None:
            raise AttributeError(method)
        return found

    def _grpc_methods(self) -> dict[str, Any]:
        """Each graph's gRPC methods by their names in the app's `.proto`s."""
        methods: dict[str, Any] = {}
        for name, driver in self.drivers.items():
            prefix = service_name(name)
            ingress = GrpcIngress(driver.program.plan, new_id=serve_request_id,
                                  output_stage=driver.program.plan.output_stages(),
                                  method_prefix=prefix)
            methods[f"{prefix}{UNARY_METHOD}"] = _unary(ingress, driver)
            methods[f"{prefix}{STREAM_METHOD}"] = _streaming(ingress, driver)
        return methods

    def plan(self, graph: str | None = None) -> str:
        """A graph's plan as JSON; without `graph`, the application's."""
        if graph is None:
            return self.app_plan.model_dump_json()
        return self._driver(graph).plan()



def _unary(ingress: GrpcIngress, driver: PipelineDriver) -> Callable[..., Any]:
    """A graph's unary gRPC method: a plain function (Serve reads its name and signature,
    the `grpc_context` keyword included)."""

    async def call(request: bytes, grpc_context: Any = None) -> Any:
        return await ingress.call(request, grpc_context, driver.run)

    return call


def _streaming(ingress: GrpcIngress, driver: PipelineDriver) -> Callable[..., Any]:
    """A graph's server-streaming gRPC method (see `_unary`)."""

    async def stream(request: bytes, grpc_context: Any = None) -> AsyncIterator[Any]:
        async for message in ingress.stream(request, grpc_context, driver.stream):
            yield message

    return stream

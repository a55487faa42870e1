"""The front door of an `sg.App`: the user's ASGI app (FastAPI's) with the graphs mounted.

Each graph with a route answers `POST <route>` exactly as a single pipeline's ingress does
(`ingress.handle_http`: the same body rules, errors, 413, streaming, `x-request-id`) and
`GET <route>/-/plan`, `/-/openapi.json`, `/-/graph.svg`. On a FastAPI app they are added
with `add_api_route`, so the app's own dependencies (an API-key check), middleware and
exception handlers apply to them as to its other routes, and its `/openapi.json` documents
them (their request bodies and error schemas merged into its components). The app's own
routes call any graph of the application through the `graphs` dependency:

    @api.post("/answer")
    async def answer(q: Query, graphs: sg.Graphs = Depends(sg.graphs)):
        return await graphs["search"].acall(q.model_dump())

which runs the graph in this process's executor (the driver replica's on Serve, the local
executor in `servegraph run --local`), under the request's `x-request-id`. A servegraph error
such a route lets through is answered as the ingress answers it: its 4xx/5xx and JSON body.

This layer is handed each graph's entry points (`Endpoint`): it never imports an executor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from ..compiler import CompiledPipeline
from ..dag.request import takes_raw_request
from ..errors import PipelineError
from .ingress import (
    Runner,
    Streamer,
    error_body,
    error_response,
    handle_http,
    new_request_id,
    request_id_for,
)
from .views import openapi, plan_views

__all__ = ["Endpoint", "GraphCall", "Graphs", "front_app", "graph_routes", "graphs"]


class Endpoint:
    """One graph behind the front door: its plan and its executor's entry points (`run`:
    `run(payload, request_id, deadline_s=None)`; `stream` for a streamed output), how HTTP
    reaches it (`http`), and how the app's routes call it (`GraphCall`)."""

    def __init__(self, plan: CompiledPipeline, run: Runner, *, stream: Streamer | None = None,
                 diagram_svg: bytes | None = None, echo_request_id: bool = True,
                 new_id: Callable[[], str] = new_request_id) -> None:
        self.plan = plan
        self.run = run
        self.stream = stream
        self.views = plan_views(plan, diagram_svg)
        self.echo_request_id = echo_request_id
        self.new_id = new_id
        self.needs_body = plan.reads_input()
        self.output_stage = plan.output_stages()
        self.raw_input = takes_raw_request(plan.input_model)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (with the user's app it is mounted on, sent to a replica), an endpoint is
        a detached one: its executor stays in this process, and the app is mounted afresh
        where it arrives (`front_app` drops the routes mounted before)."""
        return (_detached, (self.plan.name,))

    async def http(self, request: Request) -> Response:
        """`POST <route>` (and its views on GET), as a single pipeline's ingress answers."""
        return await handle_http(request, self.run, echo_request_id=self.echo_request_id,
                                 views=self.views, stream=self.stream,
                                 needs_body=self.needs_body, new_id=self.new_id,
                                 output_stage=self.output_stage, raw_input=self.raw_input)


class DetachedEndpoint:
    """An endpoint that reached another process with the app it was mounted on: it answers
    503 until the app is mounted there (which replaces its routes)."""

    def __init__(self, graph: str) -> None:
        self.graph = graph
        self.views: dict[str, Any] = {}

    async def http(self, request: Request) -> Response:
        return JSONResponse({"error": f"graph {self.graph!r} is not mounted in this process",
                             "stage": None, "request_id": request_id_for(request)},
                            status_code=503)


def _detached(graph: str) -> DetachedEndpoint:
    return DetachedEndpoint(graph)


@dataclass(frozen=True)
class GraphCall:
    """One graph, called from a route of the app under that request's id."""

    endpoint: Endpoint
    request_id: str

    async def acall(self, payload: Any = None, request_id: str | None = None, *,
                    deadline_s: float | None = None) -> Any:
        """The graph's outputs (as `PipelineHandle.acall`); servegraph errors are raised."""
        return await self.endpoint.run(payload, request_id or self.request_id,
                                       deadline_s=deadline_s)

    def astream(self, payload: Any = None, request_id: str | None = None
                ) -> AsyncIterator[Any]:
        """A streaming graph's chunks as they come."""
        if self.endpoint.stream is None:
            raise TypeError(f"graph {self.endpoint.plan.name!r} does not stream: acall() it")
        return self.endpoint.stream(payload, request_id or self.request_id)


class Graphs(Mapping[str, GraphCall]):
    """The application's graphs by name, for one request (what `graphs` gives a route)."""

    def __init__(self, endpoints: Mapping[str, Endpoint], request_id: str) -> None:
        self._endpoints = endpoints
        self.request_id = request_id

    def __getitem__(self, name: str) -> GraphCall:
        endpoint = self._endpoints.get(name)
        if endpoint is None:
            raise KeyError(f"no graph named {name!r} in this app; graphs: "
                           f"{', '.join(self._endpoints)}")
        return GraphCall(endpoint, self.request_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)


@dataclass
class FrontState:
    """What the front door keeps on its app's `state`: the graphs and the request ids. It
    belongs to this process: pickled, it is an empty one (see `Endpoint.__reduce__`)."""

    endpoints: Mapping[str, Endpoint]
    new_id: Callable[[], str]
    echo_request_id: bool  # False behind Serve's proxy, which sets `x-request-id` itself

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrontState, ({}, new_request_id, True))


# the attribute a route servegraph mounted carries (the graph's name): mounting again (a
# second local run, a test, the copy a replica received) drops those routes first
MOUNTED = "servegraph_graph"
# the attribute keeping the app's own OpenAPI generator, which servegraph's merge wraps
OWN_OPENAPI = "servegraph_own_openapi"


def graphs(request: Request) -> Graphs:
    """The FastAPI dependency giving a route the application's graphs (`Depends(sg.graphs)`)."""
    front: FrontState | None = getattr(request.app.state, "servegraph", None)
    if front is None:
        raise RuntimeError("sg.graphs is for the routes of an sg.App's ingress app: serve it "
                           "with sg.serve(sg.App({...}, ingress=app)) or servegraph run")
    return Graphs(front.endpoints, request_id_for(request, front.new_id))


def front_app(ingress: Any, routes: Mapping[str, str], endpoints: Mapping[str, Endpoint],
              *, title: str = "servegraph", dependencies: Sequence[Any] = ()) -> Any:
    """The ASGI app to serve: `ingress` (a FastAPI or Starlette app; None: a new FastAPI
    app titled `title`) with each graph mounted at its route (`routes`: path -> graph name);
    any other ASGI app is mounted at `/` under a Starlette app holding the graphs' routes.
    `dependencies` (FastAPI's) guard the graphs' routes, on a FastAPI app."""
    first = next(iter(endpoints.values()))
    front = FrontState(endpoints, first.new_id, first.echo_request_id)
    if ingress is None:
        from fastapi import FastAPI

        ingress = FastAPI(title=title)
    if not isinstance(ingress, Starlette):
        outer = Starlette(routes=[*_routes(routes, endpoints), Mount("/", app=ingress)])
        outer.state.servegraph = front
        return outer
    ingress.router.routes[:] = [route for route in ingress.router.routes
                                if getattr(route, MOUNTED, None) is None]
    before = list(ingress.router.routes)
    ingress.state.servegraph = front
    _answer_pipeline_errors(ingress, front)
    if hasattr(ingress, "add_api_route"):  # FastAPI: dependencies and OpenAPI apply
        _mount_api(ingress, routes, endpoints, list(dependencies))
    else:
        ingress.router.routes.extend(_routes(routes, endpoints))
    for route in ingress.router.routes:
        if route not in before:
            setattr(route, MOUNTED, True)
    ingress.middleware_stack = None  # built again on the next request, with the handler
    return ingress


def _routes(routes: Mapping[str, str], endpoints: Mapping[str, Endpoint]) -> list[Route]:
    return [route for path, name in routes.items()
            for route in graph_routes(path, endpoints[name])]


def graph_routes(path: str, endpoint: Endpoint) -> list[Route]:
    """A graph's `POST <path>` (any other method: a JSON 405) and its views on GET."""
    path = "/" + path.strip("/")
    return [Route(path, endpoint.http, methods=["GET", "POST"]),
            *[Route(path.rstrip("/") + suffix, endpoint.http, methods=["GET"])
              for suffix in endpoint.views]]


def _mount_api(api: Any, routes: Mapping[str, str], endpoints: Mapping[str, Endpoint],
               dependencies: list[Any]) -> None:
    """Each graph's routes on a FastAPI app, documented in its OpenAPI (see the docstring)."""
    components: dict[str, Any] = {}
    for path, name in routes.items():
        endpoint = endpoints[name]
        spec = openapi(endpoint.plan, path)
        operation = spec["paths"][path]["post"]
        components.update(spec["components"]["schemas"])
        api.add_api_route(
            path, endpoint.http, methods=["POST"], name=f"graph {name}",
            dependencies=dependencies,
            summary=operation["summary"], operation_id=f"run_{name}",
            openapi_extra={key: operation[key] for key in ("requestBody", "responses",
                                                           "parameters")})
        for suffix in endpoint.views:
            api.add_api_route(path.rstrip("/") + suffix, endpoint.http, methods=["GET"],
                              include_in_schema=False, name=f"graph {name} {suffix}",
                              dependencies=dependencies)
    if getattr(api, OWN_OPENAPI, None) is None:
        setattr(api, OWN_OPENAPI, api.openapi)
    generate = getattr(api, OWN_OPENAPI)
    api.openapi_schema = None

    def merged() -> dict[str, Any]:
        if api.openapi_schema is not None:
            return api.openapi_schema
        schema = generate()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for key, value in components.items():
            schemas.setdefault(key, value)
        return schema

    api.openapi = merged


def _answer_pipeline_errors(app: Starlette, front: FrontState) -> None:
    """A servegraph error out of one of the app's own routes: the ingress's JSON answer."""

    async def answer(request: Request, exc: Exception) -> Response:
        request_id = request_id_for(request, front.new_id)
        headers = {"x-request-id": request_id} if front.echo_request_id else {}
        return error_response(*error_body(exc, request_id), headers)

    app.add_exception_handler(PipelineError, answer)

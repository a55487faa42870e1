"""The local executor behind the same HTTP API as the Serve driver (`servegraph run --local`):
one process, no Ray, for trying a pipeline with curl or a front end."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..compiler import CompiledPipeline
from ..executors.local import LocalExecutor
from .ingress import handle_http, plan_views


def local_app(plan: CompiledPipeline, route_prefix: str, *, diagram_svg: bytes | None = None,
              on_startup: Callable[[], None] | None = None) -> Starlette:
    """A Starlette app answering `POST <route_prefix>` and `GET <route_prefix>/-/...`."""
    executor = LocalExecutor(plan)
    views = plan_views(plan, diagram_svg)

    async def endpoint(request: Request) -> Response:
        return await handle_http(request, executor.run, views=views,
                                 stream=executor.stream if executor.program.streams else None)

    route = "/" + route_prefix.strip("/")
    routes = [Route(route, endpoint, methods=["GET", "POST"])]
    routes += [Route(route.rstrip("/") + suffix, endpoint, methods=["GET"]) for suffix in views]

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if on_startup is not None:
            on_startup()
        yield

    return Starlette(routes=routes, lifespan=lifespan)

"""A pipeline behind the same HTTP API as the Serve driver, in this process: what
`servegraph run --local` serves with the local executor, for trying a pipeline with curl or a
front end. The caller passes the entry points (`run`, and `stream` for a streamed output), so
this layer never imports an executor."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..compiler import CompiledPipeline
from ..dag.request import takes_raw_request
from .ingress import Runner, Streamer, handle_http, plan_views


def local_app(plan: CompiledPipeline, route_prefix: str, run: Runner, *,
              stream: Streamer | None = None, diagram_svg: bytes | None = None,
              on_startup: Callable[[], None] | None = None) -> Starlette:
    """A Starlette app answering `POST <route_prefix>` with `run(payload, request_id)` (or
    `stream`'s chunks, for a streamed output) and `GET <route_prefix>/-/...` with the plan's
    views. A plan whose input is `sg.HttpRequest` gets the request itself, unparsed."""
    views = plan_views(plan, diagram_svg)
    needs_body = plan.reads_input()
    output_stage = plan.output_stages()
    raw_input = takes_raw_request(plan.input_model)

    async def endpoint(request: Request) -> Response:
        return await handle_http(request, run, views=views, stream=stream,
                                 needs_body=needs_body, output_stage=output_stage,
                                 raw_input=raw_input)

    route = "/" + route_prefix.strip("/")
    routes = [Route(route, endpoint, methods=["GET", "POST"])]
    routes += [Route(route.rstrip("/") + suffix, endpoint, methods=["GET"]) for suffix in views]

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if on_startup is not None:
            on_startup()
        yield

    return Starlette(routes=routes, lifespan=lifespan)

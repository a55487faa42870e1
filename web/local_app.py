"""A pipeline behind the same HTTP API as the Serve driver, in this process: what
`servegraph run --local` serves with the local executor, for trying a pipeline with curl or a
front end. The caller passes the entry points (`run`, and `stream` for a streamed output), so
this layer never imports an executor."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette

from ..compiler import CompiledPipeline
from .front import Endpoint, graph_routes
from .ingress import Runner, Streamer


def local_app(plan: CompiledPipeline, route_prefix: str, run: Runner, *,
              stream: Streamer | None = None, diagram_svg: bytes | None = None,
              on_startup: Callable[[], None] | None = None) -> Starlette:
    """A Starlette app answering `POST <route_prefix>` with `run(payload, request_id)` (or
    `stream`'s chunks, for a streamed output) and `GET <route_prefix>/-/...` with the plan's
    views. A plan whose input is `sg.HttpRequest` gets the request itself, unparsed."""
    endpoint = Endpoint(plan, run, stream=stream, diagram_svg=diagram_svg)
    routes = graph_routes(route_prefix, endpoint)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if on_startup is not None:
            on_startup()
        yield

    return Starlette(routes=routes, lifespan=lifespan)

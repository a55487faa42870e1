"""A middleware in Ray Serve's HTTP proxy: a request whose ingress replica died gets a JSON 502
naming the pipeline's driver, not a bare `500 Internal Server Error`.

When the driver replica is killed while it handles a request, Serve 2.60's proxy maps the
actor's death to a 500 but sends no response for it (it writes one only for 408, 429 and 503),
so uvicorn answers with its own text body: nothing says which stage failed or which request it
was. This middleware wraps the proxy's ASGI app; when the app finishes an HTTP request without
starting a response, it sends `{"error", "stage", "request_id"}` (the ingress's error shape)
with status 502, `Retry-After: 1` (Serve is starting a replacement) and `x-request-id`.
Responses the proxy did start pass through untouched.

It also reads a request's body whole before the proxy sees it (one that declares a
`content-length` up to `MAX_BODY_BYTES`) and puts it in the ASGI scope (`BODY_SCOPE_KEY`), which
Serve sends to the driver replica with the request; the driver reads it there
(`ingress.read_body`). Serve 2.60's proxy otherwise queues the body for the replica to fetch
once, by a call back to the proxy (`receive_asgi_messages`). A driver replica killed after it
fetched a body but before the proxy's router saw it accept the request fails the routing
attempt with `ActorDiedError`, and the router sends the request to another replica (Serve's
retry of a request not yet accepted); that replica found the queue empty and waited for a
body the client had already sent, until the client gave up. The proxy's queue still gets the
body too, for anything that reads it the usual way.

Serve loads it in every proxy from `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` (Serve's hook
for proxy middlewares, ray#35619), which must be set before Ray starts: the runner's embedded
Ray and the test session set `serving.env.PROXY_ENV`; a cluster started by hand exports it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .body import BODY_SCOPE_KEY, MAX_BODY_BYTES

REQUEST_ID_HEADER = b"x-request-id"
STATUS = 502

logger = logging.getLogger("ray.serve")


def middlewares() -> list[Any]:
    """What Serve's proxy calls (see the module docstring): the middlewares to wrap it with."""
    from starlette.middleware import Middleware

    return [Middleware(IngressDiedGuard)]


class IngressDiedGuard:
    """ASGI middleware: an HTTP request the wrapped app leaves unanswered gets a JSON 502."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carried = await carry_body(scope, receive)
        if carried is None:  # the client went away before its body was complete
            return
        started = False

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, carried, watched_send)
        except Exception:
            if started:
                raise
            logger.exception("the proxy failed a request before answering it")
        if not started:
            await self._answer(scope, send)

    async def _answer(self, scope: dict[str, Any], send: Any) -> None:
        path = scope.get("path", "")
        stage = self.ingress_of(path)
        request_id = next((value.decode("latin-1") for key, value in scope.get("headers", [])
                           if key.lower() == REQUEST_ID_HEADER), "")
        error = (f"the ingress {stage or 'replica'} of {path} stopped before answering (its "
                 "replica died); Serve is starting another: retry")
        logger.warning("request %s: %d: %s", request_id, STATUS, error)
        body = json.dumps({"error": error, "stage": stage, "request_id": request_id}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()), (b"retry-after", b"1")]
        if request_id:
            headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
        try:
            await send({"type": "http.response.start", "status": STATUS, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except Exception:  # the client went away: nothing left to answer
            logger.debug("request %s: client gone before the 502", request_id)

    def ingress_of(self, path: str) -> str | None:
        """The deployment behind `path`, from the proxy's route table (Serve internals: the
        wrapped app is Serve's request-id middleware around the `HTTPProxy`); None when
        they cannot be read."""
        try:
            proxy = getattr(self.app, "_app", self.app)
            matched = proxy.proxy_router.match_route(path)
            return str(matched[1].deployment_name) if matched else None
        except Exception:
            return None


Receive = Callable[[], Awaitable[dict[str, Any]]]


async def carry_body(scope: dict[str, Any], receive: Receive) -> Receive | None:
    """With a declared `content-length` up to `MAX_BODY_BYTES`: the body read whole into
    `scope[BODY_SCOPE_KEY]`, and a `receive` that gives it once more, then the client's
    next message (its disconnect). Else `receive` itself (a body sent in chunks of unknown
    length, or one the driver refuses with a 413 unread). None: the client left first."""
    declared = dict(scope.get("headers", [])).get(b"content-length", b"")
    if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
        return receive
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return None
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = scope[BODY_SCOPE_KEY] = b"".join(chunks)
    given = False

    async def replay() -> dict[str, Any]:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay

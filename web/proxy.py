"""A middleware in Ray Serve's HTTP proxy: a request whose ingress replica died gets a JSON 502
naming the pipeline's driver, not a bare `500 Internal Server Error`.

When the driver replica is killed while it handles a request, Serve 2.60's proxy maps the
actor's death to a 500 but sends no response for it (it writes one only for 408, 429 and 503),
so uvicorn answers with its own text body: nothing says which stage failed or which request it
was. This middleware wraps the proxy's ASGI app; when the app finishes an HTTP request without
starting a response, it sends `{"error", "stage", "request_id"}` (the ingress's error shape)
with status 502, `Retry-After: 1` (Serve is starting a replacement) and `x-request-id`.
Responses the proxy did start pass through untouched.

Serve loads it in every proxy from `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` (Serve's hook
for proxy middlewares, ray#35619), which must be set before Ray starts: the runner's embedded
Ray and the test session set `serving.env.PROXY_ENV`; a cluster started by hand exports it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

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
        started = False

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
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

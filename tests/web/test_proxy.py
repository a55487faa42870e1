"""The proxy middleware (`web/proxy.py`) on plain ASGI apps, without Ray: a request the
wrapped app leaves unanswered gets a JSON 502 naming the ingress; anything answered passes; a
body of declared length travels in the scope, so a retried request still has it."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from servegraph.serving.env import PROXY_ENV
from servegraph.web.ingress import BODY_SCOPE_KEY, MAX_BODY_BYTES, read_body
from servegraph.web.proxy import IngressDiedGuard, carry_body, middlewares


def call(app: Any, path: str = "/search", headers: list[tuple[bytes, bytes]] | None = None,
         scope_type: str = "http") -> list[dict[str, Any]]:
    """Run one request through `IngressDiedGuard(app)`; the messages it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": scope_type, "path": path, "headers": list(headers or [])}
    asyncio.run(IngressDiedGuard(app)(scope, receive, send))
    return sent


class Router:
    """Serve's route table as the middleware reads it: `match_route` -> (prefix, handle, _)."""

    def match_route(self, path: str) -> tuple[str, Any, bool] | None:
        if path.startswith("/search"):
            return "/search", SimpleNamespace(deployment_name="search_driver"), False
        return None


def serve_like(answer: bool, *, raises: bool = False) -> Any:
    """An app shaped like Serve's: a request-id middleware (adding the id to the scope, as
    Serve's does) around a proxy with a route table, which answers or not."""

    async def proxy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["headers"].append((b"x-request-id", b"made-by-serve"))
        if raises:
            raise RuntimeError("the actor died")
        if answer:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"[]"})

    proxy.proxy_router = Router()  # type: ignore[attr-defined]
    return RequestIdLike(proxy)


class RequestIdLike:
    """Serve's request-id middleware keeps the proxy it wraps as `_app`."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)


def test_an_unanswered_request_gets_a_502_naming_the_driver() -> None:
    start, body = call(serve_like(answer=False))
    length = str(len(body["body"])).encode()
    assert start == {"type": "http.response.start", "status": 502, "headers": [
        (b"content-type", b"application/json"), (b"content-length", length),
        (b"retry-after", b"1"), (b"x-request-id", b"made-by-serve")]}
    assert json.loads(body["body"]) == {
        "error": "the ingress search_driver of /search stopped before answering (its replica "
                 "died); Serve is starting another: retry",
        "stage": "search_driver", "request_id": "made-by-serve"}


def test_a_failing_proxy_is_answered_too_and_an_unknown_route_is_named() -> None:
    start, body = call(serve_like(answer=False, raises=True), path="/other")
    assert start["status"] == 502
    assert json.loads(body["body"])["stage"] is None
    assert json.loads(body["body"])["error"].startswith("the ingress replica of /other stopped")


def test_answered_requests_and_other_scopes_pass_untouched() -> None:
    assert call(serve_like(answer=True)) == [
        {"type": "http.response.start", "status": 200, "headers": []},
        {"type": "http.response.body", "body": b"[]"}]

    async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "lifespan.startup.complete"})

    assert call(lifespan, scope_type="lifespan") == [{"type": "lifespan.startup.complete"}]


def test_a_response_already_started_is_never_replaced() -> None:
    async def breaks_midway(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("stream broke")

    with pytest.raises(RuntimeError, match="stream broke"):
        call(breaks_midway)


def test_serve_finds_the_middleware_by_its_import_path() -> None:
    from ray.serve._private.http_util import validate_http_proxy_callback_return
    from ray.serve._private.utils import call_function_from_import_path

    path = PROXY_ENV["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"]
    found = validate_http_proxy_callback_return(call_function_from_import_path(path))
    assert [m.cls for m in found] == [m.cls for m in middlewares()] == [IngressDiedGuard]


class Client:
    """The client's side of `receive`: its body in `parts`, then its disconnect, which
    (as uvicorn's `receive`) comes only once the test lets the client go."""

    def __init__(self, *parts: bytes) -> None:
        self.messages = [{"type": "http.request", "body": part, "more_body": more}
                         for part, more in zip(parts, [True] * (len(parts) - 1) + [False])]
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.messages:
            return self.messages.pop(0)
        await self.gone.wait()
        return {"type": "http.disconnect"}


def post(body_length: int | None) -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if body_length is not None:
        headers.append((b"content-length", str(body_length).encode()))
    return {"type": "http", "method": "POST", "path": "/search", "headers": headers}


def test_a_declared_body_travels_in_the_scope_and_the_proxy_still_receives_it() -> None:
    async def run() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        scope, client = post(12), Client(b'{"x": ', b'1, "y": 2}')
        carried = await carry_body(scope, client.receive)
        assert carried is not None
        first = await carried()
        client.gone.set()
        return scope, [first, await carried()]

    scope, received = asyncio.run(run())
    assert scope[BODY_SCOPE_KEY] == b'{"x": 1, "y": 2}'
    assert received == [{"type": "http.request", "body": b'{"x": 1, "y": 2}',
                         "more_body": False}, {"type": "http.disconnect"}]


def test_a_body_of_unknown_or_refused_length_streams_through_as_before() -> None:
    for scope in (post(None), post(MAX_BODY_BYTES + 1)):
        client = Client(b"{}")
        assert asyncio.run(carry_body(scope, client.receive)) == client.receive
        assert BODY_SCOPE_KEY not in scope


def test_a_client_gone_before_its_body_is_complete_is_not_proxied() -> None:
    reached: list[Any] = []

    async def proxy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        reached.append(scope)

    async def run() -> list[dict[str, Any]]:
        client, sent = Client(b'{"x": '), []
        client.messages[0]["more_body"] = True
        client.gone.set()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await IngressDiedGuard(proxy)(post(12), client.receive, send)
        return sent

    assert asyncio.run(run()) == [] and reached == []


def test_a_retried_request_reads_the_body_its_dead_first_replica_took() -> None:
    """Serve's retry: the first driver replica takes the proxy's one copy of the body and
    dies before its acceptance arrives; the replica the request is sent to next reads the
    body from the scope, not from a queue that stays empty until the client gives up."""

    async def run() -> bytes | None:
        scope, client = post(8), Client(b'{"x": 1}')
        carried = await carry_body(scope, client.receive)
        assert carried is not None
        assert (await carried())["body"] == b'{"x": 1}'  # the first replica took it

        async def drained() -> dict[str, Any]:  # the proxy's queue, now empty
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        return await asyncio.wait_for(read_body(Request(scope, drained), MAX_BODY_BYTES), 5)

    assert asyncio.run(run()) == b'{"x": 1}'


def test_the_driver_refuses_a_carried_body_over_its_own_limit() -> None:
    scope = {**post(None), BODY_SCOPE_KEY: b"x" * 11}
    assert asyncio.run(read_body(Request(scope), 10)) is None
    assert asyncio.run(read_body(Request(scope), 11)) == b"x" * 11

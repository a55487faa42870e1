"""The front door in-process (`local_front`, what `servegraph run --local` serves for an
`sg.App`): the user's FastAPI app with its dependency, GET route and own routes, two graphs
mounted on it sharing one stage, and servegraph's error answers on every route."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

import servegraph as sg
from servegraph.executors.local.front import local_front
from servegraph.pipelines import front_door
from servegraph.pipelines.front_door import API_KEY, app

KEY = {"x-api-key": API_KEY}


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    asgi = local_front(sg.compile(app))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi),
                                 base_url="http://front") as http:
        yield http


async def test_a_get_route_of_the_users_app_needs_no_key(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_the_api_key_dependency_guards_the_graphs_routes(
        client: httpx.AsyncClient) -> None:
    refused = await client.post("/words", json={"text": "a b"})
    assert (refused.status_code, refused.json()) == (
        401, {"detail": "missing or wrong x-api-key"})
    wrong = await client.post("/digits", json={"text": "1"}, headers={"x-api-key": "nope"})
    assert wrong.status_code == 401
    answered = await client.post("/words", json={"text": "A  b C"}, headers=KEY)
    assert (answered.status_code, answered.json()) == (200, {"words": 3})
    assert (await client.post("/digits", json={"text": "a1 2 3"}, headers=KEY)).json() == {
        "sum": 6}


async def test_the_users_own_route_calls_graphs_by_name(client: httpx.AsyncClient) -> None:
    assert (await client.post("/v1/words", json={"text": "x y"})).status_code == 401
    response = await client.post("/v1/words", json={"text": "x  y"}, headers=KEY)
    # in-process, the shared stage answers from this process
    assert (response.status_code, response.json()) == (
        200, {"count": 2, "shared_pid": os.getpid()})


async def test_graph_errors_keep_servegraphs_answers(client: httpx.AsyncClient) -> None:
    bad = await client.post("/digits", json={"txt": "1"},
                            headers={**KEY, "x-request-id": "req-422"})
    assert bad.status_code == 422
    assert bad.json() == {
        "error": "request body does not fit servegraph.pipelines.front_door:Text: missing "
                 "text",
        "stage": None, "errors": [{"loc": ["text"], "msg": "Field required",
                                   "type": "missing"}], "request_id": "req-422"}
    assert bad.headers["x-request-id"] == "req-422"
    failed = await client.post("/digits", json={"text": "  "}, headers=KEY)
    assert failed.status_code == 500
    assert failed.json()["stage"] == "Normalizer"
    assert "nothing to clean: the text is blank" in failed.json()["error"]
    not_json = await client.post("/words", content=b"{", headers=KEY)
    assert not_json.status_code == 400
    # a servegraph error out of the user's own route: the same JSON answer, the request's id
    own = await client.post("/v1/words", json={"text": " "},
                            headers={**KEY, "x-request-id": "req-own"})
    assert own.status_code == 500
    assert own.json()["stage"] == "Normalizer"
    assert own.json()["request_id"] == own.headers["x-request-id"] == "req-own"
    assert (await client.post("/words", json={"text": "still up"}, headers=KEY)).json() == {
        "words": 2}


async def test_each_graph_keeps_its_views(client: httpx.AsyncClient) -> None:
    plan = await client.get("/words/-/plan", headers=KEY)
    assert plan.status_code == 200
    assert plan.json()["name"] == "words"
    assert (await client.get("/digits/-/plan")).status_code == 401
    spec = (await client.get("/digits/-/openapi.json", headers=KEY)).json()
    assert list(spec["paths"]) == ["/digits"]


async def test_the_apps_openapi_documents_the_graphs_routes(
        client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert set(spec["paths"]) == {"/health", "/v1/words", "/words", "/digits"}
    words = spec["paths"]["/words"]["post"]
    assert words["operationId"] == "run_words"
    assert words["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Text"}
    assert {"Text", "Error"} <= set(spec["components"]["schemas"])
    assert set(words["responses"]) >= {"200", "400", "413", "422", "500", "504"}


async def test_a_shared_stage_is_built_once_for_every_graph(
        monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    monkeypatch.setattr(front_door.Normalizer, "__init__", lambda self: built.append(self))
    local_front(sg.compile(app))
    assert len(built) == 1


async def test_mounting_again_replaces_the_routes_mounted_before() -> None:
    compiled = sg.compile(app)
    local_front(compiled)
    asgi = local_front(compiled)
    paths = [route.path for route in asgi.routes]
    assert paths.count("/words") == 1
    assert paths.count("/words/-/plan") == 1


async def test_an_app_without_an_ingress_gets_a_plain_one() -> None:
    plain = sg.App({"/words": front_door.words}, name="plain")
    asgi = local_front(sg.compile(plain))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi),
                                 base_url="http://plain") as http:
        response = await http.post("/words", json={"text": "one two"})
        assert (response.status_code, response.json()) == (200, {"words": 2})
        assert (await http.get("/words")).status_code == 405


async def test_a_plain_asgi_ingress_is_mounted_under_the_graphs() -> None:
    async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    asgi = local_front(sg.compile(sg.App({"/words": front_door.words}, ingress=hello)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi),
                                 base_url="http://raw") as http:
        assert (await http.get("/anything")).text == "hello"
        assert (await http.post("/words", json={"text": "a"})).json() == {"words": 1}


def test_graphs_outside_an_apps_route_say_where_they_belong() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request

    request = Request({"type": "http", "app": Starlette(), "headers": []})
    with pytest.raises(RuntimeError, match=r"sg.graphs is for the routes of an sg.App"):
        sg.graphs(request)

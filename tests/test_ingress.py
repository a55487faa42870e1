"""The HTTP contract of the ingress, in-process: the local executor behind the same handler
the Serve driver uses (no Ray needed to check statuses, bodies and headers)."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

import servegraph as sg
from servegraph.executors.ingress import View, handle_http
from tests.stages import scoring
from tests.test_local import EXPECTED, PAYLOAD


def client_for(graph: sg.Graph) -> TestClient:
    executor = sg.LocalExecutor(graph)

    async def endpoint(request: Request) -> Response:
        return await handle_http(request, executor.run)

    app = Starlette(routes=[Route("/p", endpoint, methods=["GET", "POST"])])
    return TestClient(app)


@pytest.fixture(scope="module")
def client() -> Any:
    with client_for(scoring()) as test_client:
        yield test_client


def test_success_is_the_output_without_an_envelope(client: TestClient) -> None:
    response = client.post("/p", json=PAYLOAD, headers={"x-request-id": "abc"})
    assert (response.status_code, response.json()) == (200, EXPECTED)
    assert response.headers["x-request-id"] == "abc"
    assert len(client.post("/p", json=PAYLOAD).headers["x-request-id"]) >= 16


def test_error_statuses_and_bodies(client: TestClient) -> None:
    bad = client.post("/p", json={"query": 3, "words": []}, headers={"x-request-id": "r1"})
    assert bad.status_code == 422
    assert bad.json() == {
        "error": "request body does not fit tests.stages:Request: invalid query",
        "stage": None,
        "errors": [{"loc": ["query"], "msg": "Input should be a valid string",
                    "type": "string_type"}],
        "request_id": "r1",
    }
    not_json = client.post("/p", content=b"{", headers={"x-request-id": "r2"})
    assert not_json.status_code == 400
    assert not_json.json()["error"].startswith("the request body is not JSON: ")
    assert client.get("/p").status_code == 405
    failed = client.post("/p", json={**PAYLOAD, "factor": -1}, headers={"x-request-id": "r3"})
    assert failed.status_code == 500
    assert failed.json()["stage"] == "Scorer"
    assert failed.json()["request_id"] == "r3"
    assert failed.json()["error"].endswith("raised ValueError: factor must be >= 0, got -1")
    assert client.post("/p", json=PAYLOAD).json() == EXPECTED


def test_an_output_that_is_not_json_is_a_500_not_a_crash() -> None:
    @sg.deployment
    def opaque(x: int) -> object:
        return object()

    with sg.InputNode() as inp:
        out = opaque.bind(inp.x)
    with client_for(sg.Graph(out)) as test_client:
        response = test_client.post("/p", json={"x": 1})
    assert response.status_code == 500
    assert response.json()["error"].startswith("the pipeline's output is not JSON: ")


def test_get_views_below_the_route() -> None:
    executor = sg.LocalExecutor(scoring())
    views = {"/-/plan": View(b'{"name": "scoring"}', "application/json")}

    async def endpoint(request: Request) -> Response:
        return await handle_http(request, executor.run, views=views)

    app = Starlette(routes=[Route("/p", endpoint, methods=["GET", "POST"]),
                            Route("/p/-/plan", endpoint, methods=["GET", "POST"])])
    with TestClient(app) as test_client:
        shown = test_client.get("/p/-/plan")
        assert (shown.status_code, shown.json()) == (200, {"name": "scoring"})
        assert shown.headers["content-type"] == "application/json"
        assert test_client.get("/p").status_code == 405
        assert test_client.post("/p", json=PAYLOAD).json() == EXPECTED

"""The HTTP contract of the ingress, in-process: the local executor behind the same handler
the Serve driver uses (no Ray needed to check statuses, bodies and headers)."""

from __future__ import annotations

import asyncio
import json
import pickle
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

import servegraph as sg
from servegraph.web import ingress, views
from servegraph.web.ingress import View, handle_http, plan_views
from servegraph.web.local_app import local_app
from servegraph.web.views import looks_like_token, openapi
from tests.stages import EXPECTED, PAYLOAD, scoring


def client_for(graph: sg.Graph) -> TestClient:
    executor = sg.LocalExecutor(graph)

    async def endpoint(request: Request) -> Response:
        return await handle_http(request, executor.acall)

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
        "error": "request body does not fit tests.stages:Request: invalid query (string_type)",
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


@sg.deployment
def echo(value: Any) -> Any:
    return value


@sg.deployment
def seven() -> int:
    return 7


def test_an_empty_body_is_a_400_where_the_graph_reads_its_input() -> None:
    """Through the in-process app (the Serve driver passes the same `needs_body`): with an
    input model or without one, an empty body is not JSON; a graph that never reads its input
    takes it as the payload None. A JSON `null` is a body: it does not fit the model (422)."""
    with sg.InputNode() as inp:
        whole = sg.Graph(echo.bind(inp), name="whole")
    constant = sg.Graph(seven.bind(), name="constant")
    answers = {}
    for graph in (scoring(), whole, constant):
        executor = sg.LocalExecutor(graph)
        with TestClient(local_app(executor.plan, "/p", executor.acall)) as test_client:
            response = test_client.post("/p", content=b"", headers={"x-request-id": "e"})
            answers[graph.name] = (response.status_code, response.json())
            if graph.name == "scoring":
                null = test_client.post("/p", content=b"null")
                assert (null.status_code, null.json()["error"]) == (
                    422, "request body does not fit tests.stages:Request: invalid body "
                    "(model_type)")
    empty = {"error": "the request body is empty: POST a JSON body", "stage": None,
             "request_id": "e"}
    assert answers == {"scoring": (400, empty), "whole": (400, empty), "constant": (200, 7)}


def test_get_views_below_the_route() -> None:
    executor = sg.LocalExecutor(scoring())
    views = {"/-/plan": View(b'{"name": "scoring"}', "application/json")}

    async def endpoint(request: Request) -> Response:
        return await handle_http(request, executor.acall, views=views)

    app = Starlette(routes=[Route("/p", endpoint, methods=["GET", "POST"]),
                            Route("/p/-/plan", endpoint, methods=["GET", "POST"])])
    with TestClient(app) as test_client:
        shown = test_client.get("/p/-/plan")
        assert (shown.status_code, shown.json()) == (200, {"name": "scoring"})
        assert shown.headers["content-type"] == "application/json"
        assert test_client.get("/p").status_code == 405
        assert test_client.post("/p", json=PAYLOAD).json() == EXPECTED


def test_a_body_over_the_limit_is_a_413_read_no_further() -> None:
    executor = sg.LocalExecutor(scoring())
    read: list[int] = []

    async def endpoint(request: Request) -> Response:
        return await handle_http(request, executor.acall, max_body_bytes=1000)

    app = Starlette(routes=[Route("/p", endpoint, methods=["POST"])])
    with TestClient(app) as test_client:
        declared = test_client.post("/p", content=b"x" * 1001, headers={"x-request-id": "big"})
        assert declared.status_code == 413
        assert declared.json() == {
            "error": "the request body is larger than 1000 bytes: send less (the limit is "
                     "SERVEGRAPH_MAX_BODY_BYTES)", "stage": None, "request_id": "big"}
        assert declared.headers["x-request-id"] == "big"
        assert test_client.post("/p", json=PAYLOAD).json() == EXPECTED

    async def receive() -> dict[str, Any]:  # a chunked body of 100 x 400 bytes, no length
        read.append(1)
        return {"type": "http.request", "body": b" " * 400, "more_body": len(read) < 100}

    request = Request({"type": "http", "method": "POST", "headers": [], "path": "/p"}, receive)
    assert asyncio.run(ingress.read_body(request, 1000)) is None
    assert len(read) == 3  # read up to the limit, then dropped


def test_bodies_are_json_only_never_unpickled(client: TestClient, tmp_path: Any) -> None:
    touched = tmp_path / "unpickled"
    sneaky = pickle.dumps(_Touch(str(touched)))
    response = client.post("/p", content=sneaky,
                           headers={"content-type": "application/python-pickle"})
    assert response.status_code == 400
    assert not touched.exists()
    deep = client.post("/p", content=b"[" * 100_000 + b"]" * 100_000)
    assert deep.status_code == 400
    assert deep.json()["error"].startswith("the request body is not JSON")
    for module in (ingress, views):
        source = Path(module.__file__).read_text()
        assert not re.search(r"import (cloud)?pickle|pickle\.loads?|marshal", source)


class _Touch:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


@sg.deployment
class Keyed:
    def __init__(self, api_key: str, model: str, env: dict[str, str], hub_token: str = "",
                 retries: int = 3) -> None:
        self.model = model

    def __call__(self, x: int) -> str:
        return self.model


SECRETS = ["sk-abc123def456ghi789jkl012", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
           "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "s3cr3t-pa55"]


def test_the_served_plan_redacts_secrets_the_plan_keeps_them() -> None:
    with sg.InputNode() as inp:
        out = Keyed.bind(SECRETS[3], "models/minilm-l6", {"HF_TOKEN": "abc", "MODE": "fast"},
                         hub_token=SECRETS[1], retries=2).__call__.bind(inp.x)
    plan = sg.compile(sg.Graph(out, name="keyed"))
    served = plan_views(plan, None)["/-/plan"].body.decode()
    assert not [secret for secret in [*SECRETS[1:], "abc"] if secret in served]
    stage = next(d for d in json.loads(served)["deployments"] if d["name"] == "Keyed")
    assert stage["init_args"] == [
        {"$const": "<redacted>"}, {"$const": "models/minilm-l6"},
        {"$dict": {"HF_TOKEN": {"$const": "<redacted>"}, "MODE": {"$const": "fast"}}}]
    assert stage["init_kwargs"] == {"hub_token": {"$const": "<redacted>"},
                                    "retries": {"$const": 2}}
    assert plan.deployments[0].init_args[0] == {"$const": SECRETS[3]}  # the plan is unchanged


@pytest.mark.parametrize(("value", "secret"), [
    *[(s, True) for s in SECRETS[:3]],
    ("ghp_0123456789abcdefghijABCDEFGHIJ012345", True),
    ("AKIAIOSFODNN7EXAMPLE", True),
    ("f3a9c2e7b1d84a6f9e0c5b7a2d1e8f4c", True),
    ("models/minilm-l6", False), ("tests.stages:Scorer", False), ("all-MiniLM-L6-v2", False),
    ("a sentence with words in it that is long enough", False), ("n12", False), (42, False),
])
def test_what_looks_like_a_token(value: Any, secret: bool) -> None:
    assert looks_like_token(value) is secret


def test_openapi_describes_the_route_its_input_and_its_errors(client: TestClient) -> None:
    plan = sg.compile(scoring())
    schema = openapi(plan, "/scoring")
    post = schema["paths"]["/scoring"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Request"}
    assert set(schema["components"]["schemas"]["Request"]["properties"]) >= {"query", "words"}
    assert set(post["responses"]) == {"200", "400", "413", "422", "500", "503", "504"}
    jsonschema.Draft202012Validator.check_schema(schema["components"]["schemas"]["Error"])
    bad = client.post("/p", json={"query": 3, "words": []})
    jsonschema.validate(bad.json(), schema["components"]["schemas"]["Error"])
    with sg.InputNode() as inp:
        out = Keyed.bind("k", "m", {}).__call__.bind(inp)
    untyped = openapi(sg.compile(sg.Graph(out, name="free")), "/free")
    assert untyped["paths"]["/free"]["post"]["requestBody"]["content"][
        "application/json"]["schema"] == {}

"""A pipeline whose input is `sg.HttpRequest`, in-process: the request reaches its stages as it
came (multipart files and fields, a raw body, a JSON body as bytes, headers, query), within
the ingress's size limit, and a stage's `sg.InputError` is the caller's 422."""

from __future__ import annotations

from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

import servegraph as sg
from servegraph.dag import takes_raw_request
from servegraph.web.ingress import handle_http
from servegraph.web.local_app import local_app
from tests import request_stages as rs


def client_for(graph: sg.Graph) -> TestClient:
    """`servegraph run --local`'s app for `graph`, at `/p`."""
    executor = sg.LocalExecutor(graph)
    return TestClient(local_app(executor.plan, "/p", executor.acall))


def multipart(files: dict[str, Any], data: dict[str, str] | None = None
              ) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body as httpx encodes it, and its content-type header."""
    request = httpx.Request("POST", "http://x", files=files, data=data)
    return request.read(), {"content-type": request.headers["content-type"]}


def test_a_multipart_file_reaches_the_stage_as_an_upload() -> None:
    body, headers = multipart({"image": ("d.png", b"\x89PNG-bytes", "image/png")})
    with client_for(rs.uploads()) as client:
        response = client.post("/p", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"filename": "d.png", "content_type": "image/png", "size": 10,
                               "head": "\x89PNG-byt"}


def test_the_body_headers_query_and_form_reach_the_stages() -> None:
    with client_for(rs.echoes()) as client:
        raw = client.post("/p?k=7&k=8", content=b"\x00\x01raw",
                          headers={"content-type": "application/octet-stream",
                                   "X-Tenant": "acme"})
        as_json = client.post("/p?k=1", json={"a": 1}, headers={"x-tenant": "t"})
        body, headers = multipart({"f": ("a.txt", b"hi", "text/plain")}, {"name": "ann"})
        form = client.post("/p?k=2", content=body, headers={**headers, "x-tenant": "t"})
    assert raw.status_code == 200, raw.text
    assert raw.json() == {"body": "\x00\x01raw", "content_type": "application/octet-stream",
                          "tenant": "acme", "k": "8", "form": {}}
    assert as_json.json() == {"body": '{"a":1}', "content_type": "application/json",
                              "tenant": "t", "k": "1", "form": {}}
    assert form.json()["form"] == {"name": "ann"}
    assert form.json()["content_type"].startswith("multipart/form-data; boundary=")


def test_the_whole_request_is_one_value() -> None:
    body, headers = multipart({"a": ("a", b"1", "text/plain"), "b": ("b", b"2", "text/plain")})
    with client_for(rs.wholes()) as client:
        files = client.post("/p", content=body, headers=headers).json()
        empty = client.post("/p", content=b"", headers={"content-type": "text/plain"}).json()
    assert files == {"files": ["a", "b"], "size": len(body), "media_type": "multipart/form-data",
                     "has_host": True}
    assert empty == {"files": [], "size": 0, "media_type": "text/plain", "has_host": True}


def test_an_oversized_upload_is_a_413_before_any_stage_runs() -> None:
    executor = sg.LocalExecutor(rs.uploads())
    raw = takes_raw_request(executor.plan.input_model)

    async def endpoint(request: Request) -> Response:
        return await handle_http(request, executor.acall, max_body_bytes=1000, raw_input=raw)

    app = Starlette(routes=[Route("/p", endpoint, methods=["POST"])])
    small, small_headers = multipart({"image": ("d.png", b"x" * 500, "image/png")})
    big, big_headers = multipart({"image": ("d.png", b"x" * 1000, "image/png")})
    with TestClient(app) as client:
        assert client.post("/p", content=small, headers=small_headers).status_code == 200
        response = client.post("/p", content=big, headers=big_headers)
    assert response.status_code == 413
    assert response.json()["error"] == (
        "the request body is larger than 1000 bytes: send less (the limit is "
        "SERVEGRAPH_MAX_BODY_BYTES)")


def test_a_malformed_multipart_body_is_a_400() -> None:
    with client_for(rs.uploads()) as client:
        response = client.post("/p", content=b"--x\r\nnot a part",
                               headers={"content-type": "multipart/form-data"})
    assert response.status_code == 400
    assert response.json()["error"] == (
        "the multipart/form-data body cannot be parsed: Missing boundary in multipart.")


def test_a_stage_refusing_its_input_is_a_422_naming_the_problem() -> None:
    with client_for(rs.judged()) as client:
        good = client.post("/p", content=b"ok", headers={"content-type": "text/plain"})
        bad = client.post("/p", content=b"nope", headers={"content-type": "text/plain"})
    assert (good.status_code, good.json()) == (200, 1)
    assert bad.status_code == 422
    assert bad.json()["error"] == "the body must be 'ok', got b'nope'"


def test_python_clients_pass_the_request_or_its_fields() -> None:
    executor = sg.LocalExecutor(rs.echoes())
    fields = {"body": b"hi", "content_type": "text/plain", "headers": {"x-tenant": "a"},
              "query": {"k": "3"}}
    expected = {"body": "hi", "content_type": "text/plain", "tenant": "a", "k": "3", "form": {}}
    assert executor.call(sg.HttpRequest(**fields)) == expected
    assert executor.call(fields) == expected

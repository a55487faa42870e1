"""Stages that read the HTTP request itself (`sg.InputNode(sg.HttpRequest)`): what reaches
them from a multipart form, a raw body, the headers and the query."""

from __future__ import annotations

from typing import Any

import servegraph as sg


@sg.deployment
def describe(upload: sg.Upload) -> dict[str, Any]:
    """An upload as JSON: its name, content type, size and first bytes."""
    return {"filename": upload.filename, "content_type": upload.content_type,
            "size": len(upload.data), "head": upload.data[:8].decode("latin-1")}


@sg.deployment
def wants_text(text: str) -> str:
    return text


@sg.deployment
def echo(body: bytes, content_type: str, tenant: str, k: str, form: dict[str, str]
         ) -> dict[str, Any]:
    """What a stage sees of a raw request: the body (as text), its content type, one
    header, one query parameter, the form's text fields."""
    return {"body": body.decode("latin-1"), "content_type": content_type, "tenant": tenant,
            "k": k, "form": form}


@sg.deployment
def whole(request: sg.HttpRequest) -> dict[str, Any]:
    """The whole request: the names of its files and headers, its size."""
    return {"files": sorted(request.files), "size": len(request.body),
            "media_type": request.media_type, "has_host": "host" in request.headers}


@sg.deployment
def judge(body: bytes) -> int:
    """A stage that refuses its caller's input."""
    if body != b"ok":
        raise sg.InputError(f"the body must be 'ok', got {body[:20]!r}")
    return 1


def uploads() -> sg.Graph:
    with sg.InputNode(sg.HttpRequest) as req:
        out = describe.bind(req.files["image"])
    return sg.Graph(out, name="uploads")


def echoes() -> sg.Graph:
    with sg.InputNode(sg.HttpRequest) as req:
        out = echo.bind(req.body, req.content_type, req.headers["x-tenant"], req.query["k"],
                        req.form)
    return sg.Graph(out, name="echoes")


def wholes() -> sg.Graph:
    with sg.InputNode(sg.HttpRequest) as req:
        out = whole.bind(req)
    return sg.Graph(out, name="wholes")


def judged() -> sg.Graph:
    with sg.InputNode(sg.HttpRequest) as req:
        out = judge.bind(req.body)
    return sg.Graph(out, name="judged")


def mistyped() -> sg.Graph:
    with sg.InputNode(sg.HttpRequest) as req:
        out = wants_text.bind(req.files["image"])
    return sg.Graph(out, name="mistyped")

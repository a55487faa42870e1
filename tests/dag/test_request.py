"""`sg.InputNode(sg.HttpRequest)`: the compiler types what stages select from the request, and
the model itself (frozen, lower-case media types, the one check of a raw-input plan)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import servegraph as sg
from servegraph.compiler.types import output_type
from servegraph.dag import takes_raw_request
from tests import request_stages as rs
from tests.sites import at


def test_selections_from_the_request_are_typed() -> None:
    with sg.InputNode(sg.HttpRequest) as req:
        picks = [req.body, req.content_type, req.files["image"], req.headers["x-tenant"],
                 req.query["k"], req.form["name"], req.files]
    assert [output_type(node) for node in picks] == [
        bytes, str, sg.Upload, str, str, str, dict[str, sg.Upload]]


def test_an_upload_feeds_a_stage_taking_an_upload() -> None:
    plan = sg.compile(rs.uploads())
    assert plan.input_model == "servegraph.dag.request:HttpRequest"
    assert takes_raw_request(plan.input_model)


def test_an_upload_into_a_str_parameter_fails_to_compile() -> None:
    with pytest.raises(sg.TypeMismatchError) as caught:
        sg.compile(rs.mistyped())
    site = at(rs.__file__, """out = wants_text.bind(req.files["image"])""")
    assert str(caught.value).splitlines()[0] == (
        f"[typecheck] stage 'wants_text' ({site}): parameter 'text' of wants_text expects str, "
        f"but the value of input.files['image'] ({site}) is Upload")


def test_only_an_http_request_input_is_raw() -> None:
    assert not takes_raw_request(None)
    assert not takes_raw_request("servegraph.pipelines.digits:DigitsRequest")
    assert not takes_raw_request(sg.compile(sg.Graph(rs.judge.bind(b"ok"))).input_model)


def test_the_request_is_frozen_and_reads_its_media_type() -> None:
    request = sg.HttpRequest(body=b"x", content_type="Image/PNG; q=1",
                             files={"f": {"content_type": "text/plain; charset=utf-8"}})
    assert request.media_type == "image/png"
    assert request.files["f"] == sg.Upload(filename=None, content_type="text/plain; "
                                           "charset=utf-8", data=b"")
    assert request.files["f"].media_type == "text/plain"
    with pytest.raises(ValidationError):
        request.body = b"y"  # type: ignore[misc]
    assert sg.HttpRequest.model_validate({"body": "text"}).body == b"text"

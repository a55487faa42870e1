"""Fan-out at scale, on every executor: a map's results in order (chunked on Serve), an error
naming its element, the width bound and a non-list refused before any stage is called, strict
JSON at the HTTP edges."""

from __future__ import annotations

from pathlib import Path

import pytest

import servegraph as sg
from servegraph.testing import PipelineTester
from tests import fanout_stages as fs


def test_a_wide_map_answers_in_order(pipeline: PipelineTester) -> None:
    xs = list(range(2000, 4000))
    assert pipeline.run(fs.squares(), {"xs": xs}, trace=False) == [x * x for x in xs]
    assert pipeline.run(fs.async_squares(), {"xs": xs[:300]}, trace=False) == [
        x * x for x in xs[:300]]
    assert pipeline.run(fs.squares(chunk_size=7), {"xs": xs[:50]}, trace=False) == [
        x * x for x in xs[:50]]


def test_an_elements_failure_names_its_index_and_the_stage(pipeline: PipelineTester) -> None:
    with pytest.raises(sg.StageError) as caught:
        pipeline.run(fs.squares(), {"xs": list(range(1500))}, trace=False)
    assert caught.value.stage == "square"
    assert "element 1234 of the map: 1234 is refused" in str(caught.value)


def test_a_map_over_its_width_is_refused_before_any_call(
        pipeline: PipelineTester, tmp_path: Path) -> None:
    calls_file = str(tmp_path / "calls")
    graph = fs.bounded(calls_file)
    with pytest.raises(sg.InputError, match=r"map square \(.*\) takes at most 5 elements per "
                                            r"request, got 6"):
        pipeline.run(graph, {"n": 1, "xs": [1, 2, 3, 4, 5, 6]})
    response = pipeline.http(graph, {"n": 1, "xs": "abc"})
    assert response.status_code == 422
    assert "maps over a list, got str" in response.json()["error"]
    assert fs.calls(calls_file) == []  # neither the map nor the stage before it ran
    assert pipeline.run(graph, {"n": 7, "xs": [1, 2]}) == {"first": 7, "squares": [1, 4]}
    assert fs.calls(calls_file) == ["7"]


def test_nan_and_infinity_in_a_body_are_a_400(pipeline: PipelineTester) -> None:
    for bad in (b"NaN", b"Infinity", b"-Infinity"):
        response = pipeline.http(fs.squares(), content=b'{"xs": [1, ' + bad + b"]}")
        body = response.json()
        assert response.status_code == 400
        assert body["error"].startswith("the request body is not JSON: ")
        assert "is not a JSON number (RFC 8259)" in body["error"]
        assert body["request_id"]


def test_an_output_that_is_not_json_is_a_json_500(pipeline: PipelineTester) -> None:
    response = pipeline.http(fs.unencodable(), {"x": -1})
    body = response.json()
    assert response.status_code == 500
    assert body["error"].startswith("the pipeline's output is not JSON: ")
    assert body["stage"] == "not_json"
    assert body["request_id"] == response.headers["x-request-id"]
    assert pipeline.http(fs.unencodable(), {"x": 2}).json() == 2.0  # serving goes on

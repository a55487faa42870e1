"""A request's deadline (`sg.Graph(timeout_s=...)`, or a shorter one its caller asks for) on
every executor: past it, a 504 naming the stage still running, whose call is cancelled (the
stage sees its cancellation); a stage's own longer `timeout_s` never outlives it."""

from __future__ import annotations

from pathlib import Path

import pytest

import servegraph as sg
from servegraph.testing import PipelineTester
from tests import fanout_stages as fs
from tests.reliability_stages import until


def _marks(path: Path) -> list[str]:
    """What the stage noted (a cancelled replica notes it a moment after the request ends)."""
    until(path.exists, bool, f"a mark in {path}")
    return path.read_text().split()


def test_past_the_deadline_the_running_stage_is_named_and_cancelled(
        pipeline: PipelineTester, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    graph = fs.deadlined(str(marks), timeout_s=0.5)
    assert pipeline.run(graph, {"sleep": 0, "wait": 0}) == {"slept": 0, "waited": 0}
    with pytest.raises(sg.DeadlineError) as caught:
        pipeline.run(graph, {"sleep": 20, "wait": 0}, trace=False)
    assert caught.value.stage == "Sleeper"
    assert "the request's deadline" in str(caught.value)
    assert _marks(marks) == ["cancelled"]


def test_a_stages_own_timeout_never_outlives_the_request(pipeline: PipelineTester,
                                                        tmp_path: Path) -> None:
    graph = fs.deadlined(str(tmp_path / "marks"), timeout_s=0.5)
    with pytest.raises(sg.DeadlineError) as caught:  # not patient's own 30 s timeout
        pipeline.run(graph, {"sleep": 0, "wait": 20}, trace=False)
    assert caught.value.stage == "patient"


def test_the_client_may_ask_for_less_over_http(pipeline: PipelineTester,
                                               tmp_path: Path) -> None:
    graph = fs.deadlined(str(tmp_path / "marks"), timeout_s=30)
    response = pipeline.http(graph, {"sleep": 20, "wait": 0},
                             headers={"x-request-timeout": "0.3"})
    body = response.json()
    assert response.status_code == 504
    assert body["stage"] == "Sleeper"
    assert "the request's deadline" in body["error"]
    bad = pipeline.http(graph, {"sleep": 0, "wait": 0}, headers={"x-request-timeout": "soon"})
    assert (bad.status_code, bad.json()["error"]) == (
        400, "x-request-timeout: 'soon' is not a positive number of seconds")
    fine = pipeline.http(graph, {"sleep": 0, "wait": 0}, headers={"x-request-timeout": "20"})
    assert (fine.status_code, fine.json()) == (200, {"slept": 0, "waited": 0})


def test_a_graph_deadline_must_be_positive() -> None:
    with sg.InputNode() as inp:
        out = fs.patient.bind(inp.x)
    with pytest.raises(sg.BindError, match=r"timeout_s=0: a request's deadline is a positive "
                                           r"number of seconds"):
        sg.Graph(out, timeout_s=0)

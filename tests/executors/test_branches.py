"""Control flow on every executor (local, local-strict, Ray): only the arm taken runs, a
failing untaken arm fails nothing, fallbacks on an error and on a timeout, the split's ratio
and stickiness, a shadow's failure leaves the answer alone, a test forces an arm."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import pytest

import servegraph as sg
from servegraph.testing import PipelineTester, node, route
from tests import branch_stages as bs


def test_only_the_arm_taken_runs_and_a_shared_node_runs_once(
        pipeline: PipelineTester, tmp_path: Path) -> None:
    calls_file = str(tmp_path / "calls")
    graph = bs.language_switch(calls_file)
    assert pipeline.run(graph, {"text": " Hello ", "lang": "fr"}) == {
        "routed": "fr:hello", "clean": "hello"}
    assert pipeline.run(graph, {"text": "Hi", "lang": "xx"}) == {
        "routed": "other:Hi", "clean": "hi"}
    assert pipeline.run(graph, {"text": "Yo", "lang": "en"}) == {
        "routed": "en:yo", "clean": "yo"}
    assert bs.calls(calls_file) == ["fr", "other", "en"]
    trace = pipeline.trace(graph, {"text": "Salut", "lang": "fr"})
    assert trace.branches == {"switch lang": "fr"}
    assert trace.labels.count("clean") == 1
    assert "En" not in trace.labels and "boom" not in trace.labels


def test_a_failing_untaken_arm_does_not_fail_the_request(
        pipeline: PipelineTester, tmp_path: Path) -> None:
    graph = bs.language_switch(str(tmp_path / "calls"))
    assert pipeline.run(graph, {"text": "Ja", "lang": "en"})["routed"] == "en:ja"
    with pytest.raises(sg.StageError, match="boom on 'ja'"):
        pipeline.run(graph, {"text": "Ja", "lang": "de"})


def test_the_key_may_come_from_a_stage(pipeline: PipelineTester, tmp_path: Path) -> None:
    calls_file = str(tmp_path / "calls")
    graph = bs.classifier_route(calls_file)
    assert pipeline.run(graph, {"text": "why?"}) == "answer:why?"
    assert pipeline.run(graph, {"text": "so."}) == "echo:so."
    assert bs.calls(calls_file) == ["answer", "echo"]


def test_a_cascade_escalates_only_when_unsure(pipeline: PipelineTester, tmp_path: Path) -> None:
    calls_file = str(tmp_path / "calls")
    graph = bs.cascade(calls_file)
    assert pipeline.run(graph, {"x": 0.9}) == {"label": "cheap", "confidence": 0.9}
    assert bs.calls(calls_file) == []
    assert pipeline.run(graph, {"x": 0.1}) == {"label": "expensive", "confidence": 1.0}
    assert bs.calls(calls_file) == ["expensive"]
    assert pipeline.trace(graph, {"x": 0.95}).branches == {"when escalate": "then"}


def test_a_key_matching_no_case_is_the_callers_error(
        pipeline: PipelineTester, tmp_path: Path) -> None:
    graph = bs.strict_switch(str(tmp_path / "calls"))
    with pytest.raises(sg.InputError, match=r"switch lang \(.*\) has no case for 'xx' and no "
                                            r"default; cases: 'en', 'fr'"):
        pipeline.run(graph, {"text": "a", "lang": "xx"})
    response = pipeline.http(graph, {"text": "a", "lang": "xx"})
    assert response.status_code == 422
    assert "has no case for 'xx'" in response.json()["error"]
    ok = pipeline.http(graph, {"text": "a", "lang": "en"})  # the service goes on
    assert (ok.status_code, ok.json()) == (200, "en:a")


def test_fallback_on_an_error_and_on_a_timeout(pipeline: PipelineTester) -> None:
    graph = bs.soft_dependency()
    assert pipeline.run(graph, {"x": 3}) == {"combined": {"x": 3, "extra": {"square": 9}},
                                             "timed": {"square": 9}}
    assert pipeline.run(graph, {"x": -2}) == {"combined": {"x": -2, "extra": None},
                                              "timed": {"square": 4}}
    assert pipeline.run(graph, {"x": 200})["timed"] == {"square": -1}
    trace = pipeline.trace(graph, {"x": -2})
    assert trace.branches == {"fallback enrich": "default", "fallback timed": "primary"}
    reason = trace.span("fallback enrich").reason
    assert reason is not None and "cannot enrich -2" in reason
    timed_out = pipeline.trace(graph, {"x": 500}).span("fallback timed")
    assert timed_out.branch == "default" and "timed out" in (timed_out.reason or "")


def test_a_fallback_logs_that_it_took_its_default(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="servegraph"):
        assert sg.run_local(bs.soft_dependency(), {"x": -1})["combined"]["extra"] is None
    [record] = [r for r in caplog.records if "took its default" in r.getMessage()]
    assert "fallback enrich" in record.getMessage()
    assert "cannot enrich -1" in record.getMessage()


def _variants(pipeline: PipelineTester, graph: sg.Graph, users: list[str]) -> list[str]:
    async def all_of() -> list[str]:
        room = asyncio.Semaphore(64)  # below the driver's queue limit (1000): none dropped

        async def one(user: str) -> str:
            async with room:
                return await pipeline.arun(graph, {"user": user}, trace=False)
        return list(await asyncio.gather(*(one(user) for user in users)))
    return asyncio.run(all_of())


def test_a_sticky_split_keeps_its_ratio_and_its_keys(pipeline: PipelineTester) -> None:
    graph = bs.ab_split()
    users = [f"user{index}" for index in range(2000)]
    first = _variants(pipeline, graph, users)
    share = collections.Counter(first)["b"] / len(users)
    assert abs(share - 0.10) <= 0.03, share
    again = _variants(pipeline, graph, users[:200])
    assert again == first[:200]  # a key always lands on the same variant


def test_a_random_split_keeps_its_ratio(pipeline: PipelineTester) -> None:
    variants = _variants(pipeline, bs.ab_split(sticky=False), ["u"] * 2000)
    share = collections.Counter(variants)["b"] / len(variants)
    assert abs(share - 0.10) <= 0.03, share


def test_a_shadows_failure_does_not_change_the_answer(pipeline: PipelineTester) -> None:
    graph = bs.mirrored()
    assert pipeline.run(graph, {"text": "abc"}) == "ABC"
    assert pipeline.trace(graph, {"text": "xyz"}).branches == {"shadow mirror": "primary"}


def test_a_test_forces_an_arm(pipeline: PipelineTester, tmp_path: Path) -> None:
    calls_file = str(tmp_path / "calls")
    graph = bs.language_switch(calls_file)
    forced = {node("switch lang"): route("fr")}
    trace = pipeline.trace(graph, {"text": "x", "lang": "en"}, overrides=forced)
    assert trace.output == {"routed": "fr:x", "clean": "x"}
    assert trace.branches == {"switch lang": "fr"}
    assert bs.calls(calls_file) == ["fr"]
    soft = bs.soft_dependency()
    default = pipeline.run(soft, {"x": 4}, overrides={node("fallback enrich"): route("default")})
    assert default["combined"]["extra"] is None


def test_forcing_an_arm_that_does_not_exist_names_the_arms(tmp_path: Path) -> None:
    graph = bs.language_switch(str(tmp_path / "calls"))
    with pytest.raises(sg.CompileError, match=r"switch lang has no arm 'es' to force\n.*"
                                              r"route one of its arms: en, fr, de, default"):
        sg.LocalExecutor(graph, overrides={node("switch lang"): route("es")})

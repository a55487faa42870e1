"""The metrics recorders' buffering, isolated from Ray on purpose: Ray's instruments are
replaced by ones that note each record. A call's latency and a request's latency are recorded
as they end; counts are added up and reach Ray in one record each, `FLUSH_S` later."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import pytest

from servegraph.executors.ray import metrics


class Noted:
    """An instrument noting (method, value, tags) for each record."""

    def __init__(self, records: list[tuple[str, str, float, dict[str, str]]], name: str) -> None:
        self.records, self.name = records, name

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.records.append((self.name, "inc", value, dict(tags or {})))

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.records.append((self.name, "observe", value, dict(tags or {})))

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.records.append((self.name, "set", value, dict(tags or {})))


@pytest.fixture
def records(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, float, dict[str, str]]]:
    noted: list[tuple[str, str, float, dict[str, str]]] = []
    names = metrics.Instruments.__annotations__
    fake = SimpleNamespace(**{name: Noted(noted, name) for name in names})
    monkeypatch.setattr(metrics, "instruments", lambda: fake)
    monkeypatch.setattr(metrics, "FLUSH_S", 0.05)
    return noted


def kinds(records: list[tuple[str, str, float, dict[str, str]]]) -> list[tuple[str, str]]:
    return [(name, how) for name, how, _, _ in records]


def test_requests_are_timed_each_and_counted_by_outcome_in_one_record(
        records: list[tuple[str, str, float, dict[str, str]]]) -> None:
    recorder = metrics.PipelineMetrics("diamond", "/d")

    async def requests() -> list[tuple[str, str]]:
        for fails in (False, True, False, False):
            with pytest.raises(ValueError) if fails else contextlib.nullcontext():
                with recorder.request():
                    if fails:
                        raise ValueError("bad")
        before = kinds(records)
        await asyncio.sleep(0.2)
        return before

    before = asyncio.run(requests())
    assert before == [("pipeline_latency", "observe")] * 4
    counted = [(value, tags["outcome"]) for name, how, value, tags in records
               if name == "pipeline_requests"]
    assert sorted(counted) == [(1, "error"), (3, "ok")]
    assert all(tags["pipeline"] == "diamond" and tags["route"] == "/d"
               for _, _, _, tags in records)


def test_a_stages_calls_are_counted_per_node_and_flushed_with_the_in_flight_gauge(
        records: list[tuple[str, str, float, dict[str, str]]]) -> None:
    recorder = metrics.StageMetrics("double")

    async def calls() -> float:
        for node in ("n1", "n1", "n2"):
            with recorder.call(node):
                pass
        await asyncio.sleep(0.2)
        return recorder.running

    assert asyncio.run(calls()) == 0
    sent = {(name, tags.get("node")): value for name, how, value, tags in records
            if how in ("inc", "set")}
    assert sent == {("started", "n1"): 2, ("calls", "n1"): 2, ("started", "n2"): 1,
                    ("calls", "n2"): 1, ("in_flight", None): 0}
    assert kinds(records).count(("latency", "observe")) == 3


def test_without_an_event_loop_counts_are_sent_at_once(
        records: list[tuple[str, str, float, dict[str, str]]]) -> None:
    recorder = metrics.PipelineMetrics("diamond")
    with recorder.request():
        pass
    assert [(name, value) for name, how, value, _ in records if how == "inc"] == [
        ("pipeline_requests", 1)]


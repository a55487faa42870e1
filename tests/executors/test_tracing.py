"""OpenTelemetry traces in-process (`SERVEGRAPH_OTEL=1`): a span per request carrying its id,
a child span per stage call, branches as events of the request's span; nothing when off.
The spans are read with the SDK's in-memory exporter."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import servegraph as sg
from servegraph.executors import tracing
from tests import branch_stages, otel_stages
from tests.stages import diamond

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Traces on, finished spans collected in memory (the process's provider: the one set
    here, or one set up earlier, which then gets this exporter too)."""
    monkeypatch.setenv(tracing.ENABLE_ENV, "1")
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    if not getattr(provider, "_servegraph_test_exporter", False):
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        provider._servegraph_test_exporter = True  # type: ignore[attr-defined]
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def test_a_request_and_its_calls_are_one_trace(spans: InMemorySpanExporter) -> None:
    assert sg.LocalExecutor(diamond()).call({"x": 3}, "req-7") == 20
    finished = spans.get_finished_spans()
    [request] = [span for span in finished if span.name == "request diamond"]
    assert dict(request.attributes or {}) == {"servegraph.pipeline": "diamond",
                                              "servegraph.request_id": "req-7"}
    calls = sorted(span.name for span in finished if span is not request)
    assert calls == ["call Inc.__call__", "call add", "call double", "call triple"]
    for span in finished:
        assert span.context.trace_id == request.context.trace_id
        if span is not request:
            assert span.parent is not None
            assert span.parent.span_id == request.context.span_id
    add = next(span for span in finished if span.name == "call add")
    assert dict(add.attributes or {}) == {"servegraph.stage": "add", "servegraph.node": "n5",
                                          "servegraph.label": "add"}


def test_a_fallback_is_an_event_of_the_requests_span(spans: InMemorySpanExporter) -> None:
    result = sg.run_local(branch_stages.soft_dependency(), {"x": -2})
    assert result["combined"] == {"x": -2, "extra": None}
    [request] = [span for span in spans.get_finished_spans()
                 if span.name == "request soft_dependency"]
    events = {event.attributes["servegraph.branch"]: dict(event.attributes)  # type: ignore
              for event in request.events if event.name == "branch"}
    assert events["enrich"]["servegraph.arm"] == "default"
    assert "cannot enrich -2" in events["enrich"]["servegraph.reason"]
    assert events["timed"]["servegraph.arm"] == "primary"


def test_a_failed_request_has_an_error_status(spans: InMemorySpanExporter) -> None:
    with pytest.raises(sg.StageError, match="broken on purpose"):
        sg.run_local(_broken(), {"x": 1})
    [request] = [span for span in spans.get_finished_spans() if span.name.startswith("request")]
    assert request.status.status_code == trace.StatusCode.ERROR


def _broken() -> sg.Graph:
    @sg.deployment
    def broken(x: int) -> int:
        raise ValueError("broken on purpose")

    with sg.InputNode() as inp:
        out = broken.bind(inp.x)
    return sg.Graph(out, name="broken")


def test_no_spans_when_traces_are_off(monkeypatch: pytest.MonkeyPatch,
                                      spans: InMemorySpanExporter) -> None:
    monkeypatch.delenv(tracing.ENABLE_ENV)
    assert sg.run_local(diamond(), {"x": 3}) == 20
    assert spans.get_finished_spans() == ()


@pytest.mark.ray
def test_spans_from_the_driver_and_the_replicas_join_one_trace(
        deploy: Callable[..., Any], tmp_path: Path) -> None:
    handle = deploy(otel_stages.traced(str(tmp_path)))
    assert handle.call({"text": "abc"}, "req-otel") == {"count": 3, "safe": "none"}
    records = [json.loads(line) for file in sorted(tmp_path.glob("spans-*.jsonl"))
               for line in file.read_text().splitlines()]
    [request] = [r for r in records if r["name"] == "request traced"]
    assert request["attributes"]["servegraph.request_id"] == "req-otel"
    assert [(e["attributes"]["servegraph.branch"], e["attributes"]["servegraph.arm"])
            for e in request["events"]] == [("lucky", "default")]
    calls = {r["name"]: r for r in records if r["name"].startswith("call ")}
    assert set(calls) == {"call Upper.__call__", "call Count.__call__", "call boom"}
    for call in calls.values():
        assert call["trace_id"] == request["trace_id"]
        assert call["parent_id"] == request["span_id"]
    assert calls["call boom"]["status"] == "ERROR"
    processes = {request["pid"], *(call["pid"] for call in calls.values())}
    assert len(processes) == 4  # the driver and three stage replicas

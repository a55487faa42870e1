"""OpenTelemetry traces of served requests, opt-in: one span per request, one per stage call,
joined into one trace across the driver and the stage replicas.

Off unless `SERVEGRAPH_OTEL` is set (`1`): then each process (the caller's, every replica's)
uses the global `TracerProvider` when the application configured one (`trace.
set_tracer_provider`, e.g. with an OTLP exporter), else one servegraph sets up once with an
exporter chosen by the environment: `OTEL_EXPORTER_OTLP_ENDPOINT` (the OTLP exporter, when
`opentelemetry-exporter-otlp` is installed), or `SERVEGRAPH_OTEL_DIR`, a directory where each
process appends its finished spans as JSON lines (`spans-<pid>.jsonl`: what a test on Serve
reads back). Off, nothing here is imported by a request's path beyond one check.

The request's span (`request <pipeline>`) carries the request id (`servegraph.request_id`)
and an event per branch taken (`branch`, with the arm, and a fallback's reason). A stage
call's span (`call <stage>.<method>`) is its child: in-process directly; on Serve the driver
passes the W3C `traceparent` to the replica with the call (`carrier`), which opens the
call's span under it (`remote_span`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..compiler import NodePlan
from ..errors import PipelineError
from .program import Runner

ENABLE_ENV = "SERVEGRAPH_OTEL"
DIR_ENV = "SERVEGRAPH_OTEL_DIR"
INSTRUMENTATION = "servegraph"
_LOCK = threading.Lock()
_TRACER: Any = None


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "") not in ("", "0", "false")


def tracer() -> Any:
    """This process's tracer (set up on first use, see the module docstring), or None when
    tracing is off."""
    global _TRACER
    if not enabled():
        return None
    if _TRACER is None:
        with _LOCK:
            if _TRACER is None:
                _TRACER = _set_up()
    return _TRACER


def _set_up() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # none configured: servegraph's own
        provider = TracerProvider()
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
        if os.environ.get(DIR_ENV):
            provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(
                os.environ[DIR_ENV])))
        trace.set_tracer_provider(provider)
    return trace.get_tracer(INSTRUMENTATION)


def _otlp_exporter() -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise PipelineError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but the OTLP exporter is not installed: pip "
            "install 'servegraph[otel]' (opentelemetry-exporter-otlp-proto-http)") from exc
    return OTLPSpanExporter()


class JsonLinesExporter:
    """A span exporter appending each finished span as one JSON line to a file of this
    process's own in `directory` (several processes never share a file)."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"spans-{os.getpid()}.jsonl")

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        with open(self.path, "a") as handle:
            for span in spans:
                handle.write(json.dumps(span_record(span)) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing held open: each export opens and closes the file."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_record(span: Any) -> dict[str, Any]:
    """A finished span as plain data: ids in hex, its attributes and events."""
    context, parent = span.get_span_context(), span.parent
    return {"name": span.name, "trace_id": f"{context.trace_id:032x}",
            "span_id": f"{context.span_id:016x}",
            "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
            "pid": os.getpid(), "status": span.status.status_code.name,
            "attributes": dict(span.attributes or {}),
            "events": [{"name": event.name, "attributes": dict(event.attributes or {})}
                       for event in span.events]}


@contextlib.contextmanager
def request_span(pipeline: str, request_id: str | None) -> Iterator[SpanObserver | None]:
    """The request's span, current while the request runs; yields the `Observer` the core
    takes (branches as span events), or None when tracing is off."""
    active = tracer()
    if active is None:
        yield None
        return
    with active.start_as_current_span(f"request {pipeline}") as span:
        span.set_attribute("servegraph.pipeline", pipeline)
        if request_id:
            span.set_attribute("servegraph.request_id", request_id)
        yield SpanObserver(span)


@contextlib.contextmanager
def call_span(stage: str, node: NodePlan) -> Iterator[None]:
    """A stage call's span, under the current one (the request's, in-process)."""
    active = tracer()
    if active is None:
        yield
        return
    with active.start_as_current_span(f"call {node.label}",
                                      attributes=_call_attributes(stage, node)):
        yield


@contextlib.contextmanager
def remote_span(stage: str, node: NodePlan, otel: Mapping[str, str] | None) -> Iterator[None]:
    """A stage call's span in its replica, under the driver's span that `otel` (the call's
    `carrier`) names."""
    active = tracer() if otel else None
    if active is None:
        yield
        return
    from opentelemetry.propagate import extract

    with active.start_as_current_span(f"call {node.label}",
                                      context=extract(dict(otel or {})),
                                      attributes=_call_attributes(stage, node)):
        yield


def carrier() -> dict[str, dict[str, str]]:
    """The keyword a Serve call passes its replica (`otel=`: the current span's
    `traceparent`), or none when tracing is off."""
    if tracer() is None:
        return {}
    from opentelemetry.propagate import inject

    headers: dict[str, str] = {}
    inject(headers)
    return {"otel": headers} if headers else {}


def _call_attributes(stage: str, node: NodePlan) -> dict[str, str]:
    return {"servegraph.stage": stage, "servegraph.node": node.id,
            "servegraph.label": node.label}


class SpanObserver:
    """The core's `Observer` for a traced request: branches become events of its span, a
    failure its status; the runner is left as it is (stage calls open their own spans)."""

    def __init__(self, span: Any) -> None:
        self.span = span

    def wrap(self, runner: Runner, nodes: Sequence[NodePlan]) -> Runner:
        return runner

    def computed(self, node: NodePlan, value: Any) -> None:
        """Nothing: a computed node (the input, a selection) is not a call."""

    def branched(self, node: NodePlan, arm: str, reason: str | None) -> None:
        name = node.branch.name if node.branch is not None else node.label
        attributes = {"servegraph.branch": name, "servegraph.arm": arm}
        if reason:
            attributes["servegraph.reason"] = reason
        self.span.add_event("branch", attributes)

    def finish(self, values: dict[str, Any], output: Any, error: BaseException | None) -> None:
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_status(Status(StatusCode.ERROR, str(error)))

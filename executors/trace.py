"""A trace of one request: every node's inputs, output, start and duration, in order.

`record(trace, program, ...)` runs one request with a `Tracer`, the `Observer` the core's
`execute` takes (the core never imports this module). It wraps the runner in a
`TracingRunner`, a runner like any other: before each call it awaits the call's inputs (so it
can show them), times the call and keeps its output. That serialises nothing (independent
branches still overlap), but each call then starts from plain values: on Serve the driver
awaits every intermediate value, one transfer per node that an untraced request does not make,
and a duration there includes the handle hop. Tracing is for tests and debugging, not for the
serving path.

A map is one span (its element calls counted in `calls`, their outputs in order); a streaming
node's span shows `<stream>`: its chunks are read by its consumer, whose span shows what it
made of them. A batched call's span counts in `splits` how many times the batch it rode in
failed and was split before its item's value or error was settled (see `batching`; a map's
span sums its calls'); the table shows it as `split xN` beside the op. A branch node's span
names the arm it took (`branch`: `fr`, `then`, a split's variant, a fallback's `default`
with the failure that made it take it in `reason`); `Trace.branches` lists them by branch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..compiler import NodePlan
from ..errors import PipelineError
from .batching import noted
from .core import execute
from .program import COMPUTED, Program, Runner, Step

STREAM = "<stream>"
_UNCALLED = (*COMPUTED, "branch")  # nodes that call no stage: their spans show no inputs


@dataclass
class Span:
    """One node of one request. Times are seconds after the request began; `splits`: how many
    times a batched call's batch was split (and the call re-run) before it settled."""

    node: str
    label: str
    op: str
    stage: str | None
    site: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    error: str | None = None
    start: float = 0.0
    duration: float = 0.0
    calls: int = 1
    splits: int = 0
    branch: str | None = None   # a branch node: the arm taken
    reason: str | None = None   # a fallback's default taken: what failed

    @property
    def inputs(self) -> Any:
        """The arguments as the stage received them (a map: the list it mapped over)."""
        if self.kwargs:
            return {**{str(i): a for i, a in enumerate(self.args)}, **self.kwargs}
        return self.args[0] if len(self.args) == 1 else self.args


@dataclass
class Trace:
    """Spans of one request, in the order the nodes started; `output` or `error` its end."""

    pipeline: str
    executor: str = ""
    spans: list[Span] = field(default_factory=list)
    output: Any = None
    error: BaseException | None = None

    def span(self, label: str) -> Span:
        """The span of the node with this label (or plan id)."""
        found = [s for s in self.spans if label in (s.label, s.node)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} spans labelled {label!r}; labels: "
                           f"{', '.join(s.label for s in self.spans)}")
        return found[0]

    @property
    def labels(self) -> list[str]:
        return [span.label for span in self.spans]

    @property
    def branches(self) -> dict[str, str]:
        """The arm each branch node took, by its label (`{"switch lang": "fr"}`)."""
        return {span.label: span.branch for span in self.spans if span.branch is not None}

    def table(self, width: int = 48) -> str:
        """The spans as a text table; values cut to `width` characters."""
        rows = [("#", "node", "op", "label", "stage", "start ms", "took ms", "inputs",
                 "output")]
        for index, span in enumerate(self.spans, 1):
            output = f"!! {span.error}" if span.error else _cut(span.output, width)
            if span.reason:
                output = f"{output} (after: {_cut(span.reason, width)})"
            op = span.op if span.calls == 1 else f"{span.op} x{span.calls}"
            if span.splits:
                op += f" split x{span.splits}"
            if span.branch is not None:
                op += f" -> {span.branch}"
            rows.append((str(index), span.node, op, span.label, span.stage or "-",
                         f"{span.start * 1000:.1f}", f"{span.duration * 1000:.1f}",
                         "-" if span.op in _UNCALLED else _cut(span.inputs, width), output))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                 for row in rows]
        head = f"trace of {self.pipeline!r}" + (f" on {self.executor}" if self.executor else "")
        if self.error is not None:
            head += f": failed: {self.error}"
        return "\n".join([head, *lines])

    def __str__(self) -> str:
        return self.table()


def _cut(value: Any, width: int) -> str:
    text = value if value == STREAM else repr(value)
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


class _PendingStream:
    """A streaming node's call, held until its reader needs it: the inner runner takes plain
    values only, and the inputs are still this runner's tasks."""

    __slots__ = ("leaves", "step")

    def __init__(self, step: Step, leaves: list[Any]) -> None:
        self.step = step
        self.leaves = leaves


class TracingRunner:
    """Wraps a runner: each call awaits its inputs, then is timed and recorded."""

    def __init__(self, inner: Runner, trace: Trace, nodes: Sequence[NodePlan]) -> None:
        self.inner = inner
        self.trace = trace
        self.began = time.perf_counter()
        self.order = {node.id: index for index, node in enumerate(nodes)}
        self.nodes = {node.id: node for node in nodes}
        self.spans: dict[str, Span] = {}
        self.elements: dict[str, list[Span]] = {}

    def computed(self, node: NodePlan, value: Any) -> None:
        """A node the core computes itself (the input, a selection, a constant)."""
        self._span(node, output=value, start=self._now())

    def branched(self, node: NodePlan, arm: str, reason: str | None) -> None:
        """A branch node took `arm`; its output is read from the values at the end."""
        self._span(node, start=self._now(), branch=arm, reason=reason)

    def call(self, step: Step, leaves: list[Any]) -> Any:
        node = step.node
        if node.stream:  # started when its reader (or the output) needs it, inputs resolved
            self._span(node, output=STREAM, start=self._now())
            return _PendingStream(step, leaves)
        span = self._span(node, start=self._now())
        if step.items is not None:  # one element call of a map
            element = Span(node.id, node.label, node.op, node.stage, node.site)
            self.elements.setdefault(node.id, []).append(element)
            span = element
        return asyncio.ensure_future(self._traced(step, leaves, span))

    def map(self, step: Step, items: Sequence[Any], rest: list[Any]) -> list[Any]:
        """A call per element, each traced (the map's span counts them)."""
        return [self.call(step, [item, *rest]) for item in items]

    async def _traced(self, step: Step, leaves: list[Any], span: Span) -> Any:
        try:
            resolved = [await self._value(leaf) for leaf in leaves]
        except BaseException:
            span.error = "not run: an input failed or the request ended"
            raise
        span.start = self._now()
        shown = [STREAM if isinstance(leaf, _PendingStream) else value
                 for leaf, value in zip(leaves, resolved)]
        span.args, span.kwargs = step.build(shown)  # type: ignore[misc]
        with noted() as note:  # a batched call notes how often its batch was split
            try:
                value = self.inner.call(step, resolved)
                if self.inner.is_future(value):
                    value = await self.inner.resolve(value)
            except asyncio.CancelledError:
                span.error = "cancelled"
                raise
            except BaseException as exc:
                span.error = str(self.inner.on_error(exc, None))
                raise
            finally:
                span.duration = self._now() - span.start
                span.splits = note.splits
        span.output = value
        return value

    async def _value(self, leaf: Any) -> Any:
        if isinstance(leaf, _PendingStream):
            return await self._started(leaf)
        if isinstance(leaf, asyncio.Future):
            return await leaf
        if self.inner.is_future(leaf):
            return await self.inner.resolve(leaf)
        if isinstance(leaf, list) and any(self.is_future(v) for v in leaf):
            return list(await asyncio.gather(*(self._value(v) for v in leaf)))
        return leaf

    def is_future(self, value: Any) -> bool:
        return isinstance(value, asyncio.Future) or self.inner.is_future(value)

    async def resolve(self, value: Any) -> Any:
        return await self._value(value)

    def on_error(self, error: BaseException, request_id: str | None) -> BaseException:
        return self.inner.on_error(error, request_id)

    def discard(self, value: Any) -> None:
        if not isinstance(value, asyncio.Future):
            self.inner.discard(value)
        elif not value.done():
            value.cancel()
        elif not value.cancelled():
            value.exception()

    def open(self, stream: Any) -> AsyncIterator[Any]:
        if isinstance(stream, _PendingStream):
            return self._open_later(stream)
        return self.inner.open(stream)

    async def _open_later(self, pending: _PendingStream) -> AsyncIterator[Any]:
        async for chunk in self.inner.open(await self._started(pending)):
            yield chunk

    async def _started(self, pending: _PendingStream) -> Any:
        """The inner runner's stream, started once its inputs are values."""
        resolved = [await self._value(leaf) for leaf in pending.leaves]
        span = self.spans[pending.step.node.id]
        span.start = self._now()
        span.args, span.kwargs = pending.step.build(  # type: ignore[misc]
            [STREAM if isinstance(leaf, _PendingStream) else value
             for leaf, value in zip(pending.leaves, resolved)])
        return self.inner.call(pending.step, resolved)

    def finish(self, values: dict[str, Any]) -> None:
        """Spans in start order into the trace; a map's element calls folded into one span,
        and a map over an empty list (no call made) given its empty output."""
        for node_id, elements in self.elements.items():
            span = self.spans[node_id]
            span.calls = len(elements)
            span.splits = sum(e.splits for e in elements)
            span.start = min(e.start for e in elements)
            span.duration = max(e.start + e.duration for e in elements) - span.start
            span.args = ([e.args[0] if e.args else None for e in elements],)
            span.output = [e.output for e in elements]
            span.error = next((e.error for e in elements if e.error), None)
        for node_id, node in self.nodes.items():
            value = values.get(node_id)
            if node.op == "branch" and node_id in self.spans:
                self.spans[node_id].output = _done(value)
            if node_id not in self.spans and isinstance(value, list) and not value:
                empty = self._span(node, output=[], start=self._now(), args=([],))
                empty.calls = 0
        self.trace.spans = sorted(self.spans.values(),
                                  key=lambda s: (round(s.start, 6), self.order[s.node]))

    def _span(self, node: NodePlan, **fields: Any) -> Span:
        span = self.spans.get(node.id)
        if span is None:
            span = self.spans[node.id] = Span(node.id, node.label, node.op, node.stage,
                                              node.site, **fields)
        return span

    def _now(self) -> float:
        return time.perf_counter() - self.began


def _done(value: Any) -> Any:
    """A value as far as it is known: a finished call's result in place of its task."""
    if isinstance(value, asyncio.Future) and value.done() and not value.cancelled() \
            and value.exception() is None:
        return value.result()
    return value


class Tracer:
    """The `Observer` that `execute` takes to record one request into `trace`: the runner
    wrapped in a `TracingRunner`, the spans, output and error written at the end."""

    runner: TracingRunner  # made by `wrap`, which the core calls first

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    def wrap(self, runner: Runner, nodes: Sequence[NodePlan]) -> Runner:
        self.runner = TracingRunner(runner, self.trace, nodes)
        return self.runner

    def computed(self, node: NodePlan, value: Any) -> None:
        self.runner.computed(node, value)

    def branched(self, node: NodePlan, arm: str, reason: str | None) -> None:
        self.runner.branched(node, arm, reason)

    def finish(self, values: dict[str, Any], output: Any, error: BaseException | None) -> None:
        self.trace.output, self.trace.error = output, error
        self.runner.finish(values)


async def record(trace: Trace, program: Program, payload: Any, runner: Runner,
                 request_id: str | None = None, *, deadline_s: float | None = None) -> Trace:
    """Run one request with `runner`, recorded into `trace` and returned; a servegraph error
    is kept in `trace.error`, not raised (a trace is for looking at a failure)."""
    try:
        await execute(program, payload, runner, request_id, observer=Tracer(trace),
                      deadline_s=deadline_s)
    except PipelineError:
        pass
    return trace

"""The local executor: a graph or plan run in-process, no Ray (see `runner`).

`LocalExecutor` mirrors the Serve client `PipelineHandle` as httpx's `Client` mirrors its
`AsyncClient`: `call`/`acall`, `stream`/`astream`, `trace`/`atrace`, with the same arguments
and meaning, so a test or a script moves between the two without branching. The blocking
methods run the request on an event loop of their own, so they refuse to run inside a running
one (they would block it): there, await the `a` method.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator, Mapping
from typing import Any, TypeVar

from ...compiler import CompiledPipeline, as_plan
from ...compiler.passes.override import override
from ...dag import Graph
from ...errors import PipelineError, StageTimeoutError
from ..core import execute, stream
from ..program import Program
from ..trace import Trace, record
from ..tracing import request_span
from .runner import LocalRunner, build_instances

T = TypeVar("T")


class LocalExecutor:
    """Run a graph or plan in-process. `overrides` swaps stages: `{Encoder: FakeEncoder}` (a
    class or function, or the stage's name as key; a class is built with the stage's own
    constructor arguments, an object is used as it is), or a call node's output for a
    constant (`{node: value}`); see `compiler.override`.

    `request_id` names the request in its errors; `timeout_s` bounds the whole request (past
    it: a `StageTimeoutError` naming the pipeline, as on Serve). `run` is `acall` by the name
    it had first, as `remote` is on `PipelineHandle`."""

    def __init__(self, graph_or_plan: Graph | CompiledPipeline, *,
                 overrides: Mapping[Any, Any] | None = None, strict: bool = False,
                 instances: Mapping[str, Any] | None = None) -> None:
        """`instances`: stage objects built already, by stage name (an `sg.App`'s graphs
        share the stages they share, `local_front`); the others are built here."""
        plan = override(as_plan(graph_or_plan), overrides or {})
        self.plan = plan
        self.program = Program(plan)
        self.strict = strict
        given = dict(instances or {})
        built = build_instances(plan, [stage for stage in plan.deployments
                                       if stage.name not in given])
        self._runner = LocalRunner(self.program, given | built, strict)

    def call(self, payload: Any = None, request_id: str | None = None, *,
             timeout_s: float | None = None, deadline_s: float | None = None) -> Any:
        """The outputs' values, blocking: for scripts and sync tests."""
        _refuse_in_loop("call()/sg.run_local() block", "await sg.LocalExecutor(graph).acall("
                        "payload)")
        return asyncio.run(self._drained(self.acall(payload, request_id, timeout_s=timeout_s,
                                                    deadline_s=deadline_s)))

    async def acall(self, payload: Any = None, request_id: str | None = None, *,
                    timeout_s: float | None = None, deadline_s: float | None = None) -> Any:
        """The outputs' values (a streamed output read to the end: its list of chunks).
        `timeout_s`: how long this caller waits; `deadline_s`: the request's own budget
        (capped by the graph's `timeout_s`): past it, its calls still running are cancelled
        and a `DeadlineError` names them."""
        with request_span(self.plan.name, request_id) as observer:  # traces, when on
            request = execute(self.program, payload, self._runner, request_id,
                              deadline_s=deadline_s, observer=observer)
            if timeout_s is None:  # the common case, without a timer
                return await request
            return await self._within(request, timeout_s, request_id)

    run = acall  # its first name, kept for existing callers (see the class docstring)

    def trace(self, payload: Any = None, request_id: str | None = None, *,
              timeout_s: float | None = None, deadline_s: float | None = None) -> Trace:
        """`atrace`, blocking."""
        _refuse_in_loop("trace() blocks", "await sg.LocalExecutor(graph).atrace(payload)")
        return asyncio.run(self._drained(self.atrace(payload, request_id, timeout_s=timeout_s,
                                                     deadline_s=deadline_s)))

    async def _drained(self, request: Awaitable[T]) -> T:
        """A blocking call's request, then the shadow candidates it left running: its event
        loop ends with it (the answer never waits for them: `acall` returns at once)."""
        try:
            return await request
        finally:
            await self.program.drain()

    async def atrace(self, payload: Any = None, request_id: str | None = None, *,
                     timeout_s: float | None = None, deadline_s: float | None = None
                     ) -> Trace:
        """Run one request recording every node's inputs, output, start and duration; the
        trace holds the `output`, or the servegraph `error` (kept, not raised)."""
        trace = Trace(self.plan.name, executor="local-strict" if self.strict else "local")
        request = record(trace, self.program, payload, self._runner, request_id,
                         deadline_s=deadline_s)
        try:
            return await request if timeout_s is None else await self._within(
                request, timeout_s, request_id)
        except StageTimeoutError as exc:
            trace.error = exc
            return trace

    def stream(self, payload: Any = None, request_id: str | None = None) -> Iterator[Any]:
        """The chunks of a pipeline whose output is a stream, blocking, each as its last stage
        yields it; leaving the loop early closes the stream (and its stages' generators)."""
        _refuse_in_loop("stream() blocks", "async for chunk in sg.LocalExecutor(graph)"
                        ".astream(payload)")
        return _blocking_chunks(self._chunks(payload, request_id))

    def astream(self, payload: Any = None, request_id: str | None = None
                ) -> AsyncIterator[Any]:
        """The chunks of a pipeline whose output is a stream, as its last stage yields them."""
        return self._chunks(payload, request_id)

    def _chunks(self, payload: Any, request_id: str | None) -> AsyncGenerator[Any, None]:
        if not self.program.streams:
            raise PipelineError(f"pipeline {self.plan.name!r} does not stream: its output is "
                                "not an async generator stage; use call()")
        return stream(self.program, payload, self._runner, request_id)

    async def _within(self, request: Awaitable[T], timeout_s: float,
                      request_id: str | None) -> T:
        """`request` awaited, or past `timeout_s` cancelled and a StageTimeoutError naming the
        pipeline raised (as `PipelineHandle` raises one)."""
        try:
            async with asyncio.timeout(timeout_s) as scope:
                return await request
        except TimeoutError:
            if not scope.expired():
                raise
            raise StageTimeoutError(self.plan.name, timeout_s, request_id=request_id) from None


def _refuse_in_loop(what: str, instead: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise PipelineError(f"LocalExecutor.{what}, and an event loop is running here: use "
                        f"`{instead}`")


def _blocking_chunks(chunks: AsyncGenerator[Any, None]) -> Iterator[Any]:
    """An async stream read blocking, on an event loop of its own that runs while the next
    chunk is awaited; a consumer that stops early closes the stream on that loop."""
    with asyncio.Runner() as runner:
        try:
            while True:
                chunk = runner.run(_next(chunks))
                if chunk is _END:
                    return
                yield chunk
        finally:
            runner.run(_close(chunks))


_END = object()


async def _next(chunks: AsyncGenerator[Any, None]) -> Any:
    return await anext(chunks, _END)


async def _close(chunks: AsyncGenerator[Any, None]) -> None:
    await chunks.aclose()


def run_local(graph_or_plan: Graph | CompiledPipeline, payload: Any = None, *,
              overrides: Mapping[Any, Any] | None = None, strict: bool = False) -> Any:
    """Run one request in-process, no Ray: what the served pipeline would return."""
    return LocalExecutor(graph_or_plan, overrides=overrides, strict=strict).call(payload)

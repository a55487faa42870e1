"""The local executor: a graph or plan run in-process, no Ray (see `runner`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ...compiler import CompiledPipeline, as_plan
from ...compiler.passes.override import override
from ...dag import Graph
from ...errors import PipelineError
from ..core import Program, execute, stream
from ..trace import Trace
from .runner import LocalRunner, build_instances


class LocalExecutor:
    """Run a graph or plan in-process. `overrides` swaps stages: `{Encoder: FakeEncoder}` (a
    class or function, or the stage's name as key; a class is built with the stage's own
    constructor arguments, an object is used as it is), or a call node's output for a
    constant (`{node: value}`); see `compiler.override`."""

    def __init__(self, graph_or_plan: Graph | CompiledPipeline, *,
                 overrides: Mapping[Any, Any] | None = None, strict: bool = False) -> None:
        plan = override(as_plan(graph_or_plan), overrides or {})
        self.plan = plan
        self.program = Program(plan)
        self.strict = strict
        self._runner = LocalRunner(self.program, build_instances(plan), strict)

    async def run(self, payload: Any = None, request_id: str | None = None) -> Any:
        """The outputs' values (a streamed output read to the end: its list of chunks)."""
        return await execute(self.program, payload, self._runner, request_id)

    async def trace(self, payload: Any = None, request_id: str | None = None) -> Trace:
        """Run one request recording every node's inputs, output, start and duration; the
        trace holds the `output`, or the servegraph `error` (kept, not raised)."""
        trace = Trace(self.plan.name, executor="local-strict" if self.strict else "local")
        try:
            await execute(self.program, payload, self._runner, request_id, trace=trace)
        except PipelineError:
            pass
        return trace

    def stream(self, payload: Any = None, request_id: str | None = None) -> AsyncIterator[Any]:
        """The chunks of a pipeline whose output is a stream, as its last stage yields them."""
        if not self.program.streams:
            raise PipelineError(f"pipeline {self.plan.name!r} does not stream: its output is "
                                "not an async generator stage; use run()")
        return stream(self.program, payload, self._runner, request_id)

    def call(self, payload: Any = None) -> Any:
        """Blocking `run`, for scripts and sync tests (not from inside a running event loop)."""
        if not _loop_running():
            return asyncio.run(self.run(payload))
        raise PipelineError("LocalExecutor.call()/sg.run_local() block, and an event loop is "
                            "running here: use `await sg.LocalExecutor(graph).run(payload)`")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_local(graph_or_plan: Graph | CompiledPipeline, payload: Any = None, *,
              overrides: Mapping[Any, Any] | None = None, strict: bool = False) -> Any:
    """Run one request in-process, no Ray: what the served pipeline would return."""
    return LocalExecutor(graph_or_plan, overrides=overrides, strict=strict).call(payload)

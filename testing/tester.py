"""`PipelineTester`: one test body, run on one executor (the `pipeline` fixture's object).

- `local`: `sg.LocalExecutor` in this process;
- `local-strict`: the same with `strict=True` (every edge type-checked and pickled);
- `ray`: the plan deployed with `sg.serve` on the session's shared Ray, as an application of
  its own (a unique name and route), deleted when the test ends, even when it fails.

Executors and deployments are cached per (graph, overrides) within a test, so a stateful stage
sees every request of the test, on every executor alike. Overrides and faults are applied as a
plan transformation (`compiler.override`), which the local runner and Serve's replicas honour
the same way. They apply to the plan compiled without a cluster spec, where a stage that gives
only `gpu_memory` has no GPU fraction yet: the local executors need none, and a fake of the
stage asks for no GPU, so it runs on Ray too (serving the real stage asks for a cluster spec).
Every request on the local executors is traced (cheap); on Ray a request is
traced only when asked (`trace=True`), because the driver then awaits every intermediate
value, which the serving path never does. The traces of a test are shown beside its failure.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from ..compiler import CompiledPipeline, as_plan
from ..compiler.passes.override import override
from ..dag import Graph
from ..errors import PipelineError
from ..executors.local import LocalExecutor
from ..executors.trace import Trace

EXECUTORS = ("local", "local-strict", "ray")
_apps = itertools.count(1)


class PipelineTester:
    """Runs graphs on one executor: `run`/`arun`, `trace`/`atrace`, `stream`/`astream`,
    `http`; `executor` names it. Its client (a `LocalExecutor` or a `PipelineHandle`) has
    the same methods either way, so only HTTP and clean-up tell them apart."""

    def __init__(self, executor: str) -> None:
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}: choose from {', '.join(EXECUTORS)}")
        self.executor = executor
        self.traces: list[Trace] = []
        self._cache: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self._clients: dict[int, Any] = {}

    @property
    def strict(self) -> bool:
        return self.executor == "local-strict"

    @property
    def on_ray(self) -> bool:
        return self.executor == "ray"

    def plan(self, graph_or_plan: Graph | CompiledPipeline, *,
             overrides: Mapping[Any, Any] | None = None,
             faults: Mapping[Any, Any] | None = None) -> CompiledPipeline:
        """The plan this tester runs: compiled, with overrides and faults applied."""
        return override(as_plan(graph_or_plan), {**(overrides or {}), **(faults or {})})

    def run(self, graph_or_plan: Graph | CompiledPipeline, payload: Any = None, *,
            overrides: Mapping[Any, Any] | None = None,
            faults: Mapping[Any, Any] | None = None, trace: bool | None = None) -> Any:
        """One request; its output, or the pipeline's error raised. `trace`: None traces on
        the local executors only, True everywhere, False nowhere."""
        _refuse_in_loop("run")
        client = self._target(graph_or_plan, overrides, faults)
        if self._traces(trace):
            return self._keep(client.trace(payload))
        return client.call(payload)

    async def arun(self, graph_or_plan: Graph | CompiledPipeline, payload: Any = None, *,
                   overrides: Mapping[Any, Any] | None = None,
                   faults: Mapping[Any, Any] | None = None, trace: bool | None = None) -> Any:
        """`run` from inside an event loop (concurrent requests: gather these)."""
        client = self._target(graph_or_plan, overrides, faults)
        if self._traces(trace):
            return self._keep(await client.atrace(payload))
        return await client.acall(payload)

    def trace(self, graph_or_plan: Graph | CompiledPipeline, payload: Any = None, *,
              overrides: Mapping[Any, Any] | None = None,
              faults: Mapping[Any, Any] | None = None) -> Trace:
        """One request, traced: every node's inputs, output, start and duration. The
        pipeline's error, if any, is in `trace.error` (not raised)."""
        _refuse_in_loop("trace")
        trace = self._target(graph_or_plan, overrides, faults).trace(payload)
        self.traces.append(trace)
        return trace

    async def atrace(self, graph_or_plan: Graph | CompiledPipeline, payload: Any = None, *,
                     overrides: Mapping[Any, Any] | None = None,
                     faults: Mapping[Any, Any] | None = None) -> Trace:
        """`trace` from inside an event loop."""
        trace = await self._target(graph_or_plan, overrides, faults).atrace(payload)
        self.traces.append(trace)
        return trace

    def stream(self, graph_or_plan: Graph | CompiledPipeline, payload: Any = None, *,
               overrides: Mapping[Any, Any] | None = None,
               faults: Mapping[Any, Any] | None = None) -> Iterator[Any]:
        """The chunks of a pipeline whose output is a stream, each as it comes (untraced)."""
        _refuse_in_loop("stream")
        return self._target(graph_or_plan, overrides, faults).stream(payload)

    def astream(self, graph_or_plan: Graph | CompiledPipeline, payload: Any = None, *,
                overrides: Mapping[Any, Any] | None = None,
                faults: Mapping[Any, Any] | None = None) -> AsyncIterator[Any]:
        """`stream` from inside an event loop: `async for chunk in pipeline.astream(...)`."""
        return self._target(graph_or_plan, overrides, faults).astream(payload)

    def http(self, graph_or_plan: Graph | CompiledPipeline, payload: Any = None, *,
             overrides: Mapping[Any, Any] | None = None,
             faults: Mapping[Any, Any] | None = None,
             headers: Mapping[str, str] | None = None, timeout_s: float = 60.0,
             content: bytes | None = None) -> Any:
        """POST `payload` as JSON to the pipeline's HTTP endpoint (locally: the same handler
        in process), or `content` as the body as it is; the `httpx.Response`."""
        target = self._target(graph_or_plan, overrides, faults)
        body: dict[str, Any] = {"json": payload} if content is None else {"content": content}
        sent = {"content-type": "application/json", **(headers or {})}
        if self.on_ray:
            import httpx

            return httpx.post(target.url, headers=sent, timeout=timeout_s, **body)
        return self._client(target).post("/pipeline", headers=sent, **body)

    def close(self) -> None:
        """Delete every application this tester deployed; close its HTTP clients."""
        errors: list[BaseException] = []
        for client in self._clients.values():
            client.__exit__(None, None, None)
        for _, target in self._cache.values():
            if self.on_ray:
                try:
                    target.shutdown(wait=False)  # the names are unique: nothing waits
                except Exception as exc:  # keep deleting the others
                    errors.append(exc)
        self._cache.clear()
        self._clients.clear()
        if errors:
            raise errors[0]

    def report(self, last: int = 3) -> str:
        """The last traces of this test as tables (for a failure report)."""
        shown = self.traces[-last:]
        head = f"{len(self.traces)} traced request(s) on {self.executor}"
        if len(shown) < len(self.traces):
            head += f", the last {len(shown)} shown"
        return "\n\n".join([head, *(trace.table() for trace in shown)])

    def _traces(self, asked: bool | None) -> bool:
        """Whether a request is traced: as asked, else on the local executors only (cheap
        there; on Ray the driver would await every intermediate value)."""
        return asked if asked is not None else not self.on_ray

    def _keep(self, trace: Trace) -> Any:
        self.traces.append(trace)
        if trace.error is not None:
            raise trace.error
        return trace.output

    def _target(self, graph_or_plan: Graph | CompiledPipeline,
                overrides: Mapping[Any, Any] | None, faults: Mapping[Any, Any] | None) -> Any:
        """The cached LocalExecutor or PipelineHandle for this graph and these overrides."""
        changes = {**(overrides or {}), **(faults or {})}
        key = (id(graph_or_plan), *((id(k), id(v)) for k, v in changes.items()))
        cached = self._cache.get(key)
        if cached is not None:
            return cached[1]
        plan = override(as_plan(graph_or_plan), changes)
        if self.on_ray:
            from ..serving import serve

            name = f"sgtest{next(_apps)}_{plan.name}"
            target: Any = serve(plan, name=name, route_prefix=f"/{name}")
        else:
            target = LocalExecutor(plan, strict=self.strict)
        # the graph, overrides and faults stay referenced, so their ids are not reused
        self._cache[key] = ((graph_or_plan, changes), target)
        return target

    def _client(self, executor: LocalExecutor) -> Any:
        client = self._clients.get(id(executor))
        if client is None:
            client = self._clients[id(executor)] = _local_client(executor)
        return client


def _refuse_in_loop(method: str) -> None:
    """The blocking methods, called in a running event loop (an async test), would block it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    instead = "async for chunk in pipeline.astream" if method == "stream" else \
        f"await pipeline.a{method}"
    raise PipelineError(f"pipeline.{method}() blocks, and an event loop is running here (an "
                        f"async test): use `{instead}(graph, payload)`")


def _local_client(executor: LocalExecutor) -> Any:
    """A Starlette test client for the local executor behind the in-process HTTP app that
    `servegraph run --local` serves (the Serve driver's handler), at `/pipeline`."""
    from starlette.testclient import TestClient

    from ..web.local_app import local_app

    app = local_app(executor.plan, "/pipeline", executor.acall,
                    stream=executor.astream if executor.program.streams else None)
    client = TestClient(app)
    client.__enter__()
    return client



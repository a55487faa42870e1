"""`PipelineHandle`: the client side of a served pipeline, calling its driver deployment
blocking, awaited or streamed, with the methods of the local executor (`LocalExecutor`).
Deploying a plan is `launch.serve_pipeline`; the replicas' side (stage replicas, the driver)
is `executors/ray`.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NamedTuple

from ray import serve
from ray.serve.handle import DeploymentHandle

from ..compiler import CompiledPipeline
from ..errors import DeployError, StageTimeoutError
from ..executors.ray.errors import as_pipeline_error, find_pipeline_error
from ..executors.ray.ray_private import http_url, route_prefix_of, router_in_separate_loop
from ..executors.trace import Trace
from .admin import applications


class PipelineHandle:
    """A served pipeline: the client that mirrors `LocalExecutor` (as httpx's `Client` mirrors
    its `AsyncClient`), `call`/`acall`, `stream`/`astream`, `trace`/`atrace` with the same
    arguments and meaning; `await remote()` is `acall` by its first name. HTTP at `url`.

    `request_id` goes to the driver, which names the request in its errors; `timeout_s` bounds
    the whole request: past it, a `StageTimeoutError` naming the pipeline.

    Where this process imported Serve in its throughput-optimised mode, a handle routes on the
    event loop it was first used in and cannot block outside one: the blocking methods then
    run on one loop of our own in a daemon thread, and the async ones on the caller's loop,
    through handles made for it on its first call (`_here`).

    `plan` is the plan it serves: the one deployed (`sg.serve`), or the one its driver serves
    (`attach`, `sg.connect`)."""

    def __init__(self, handle: DeploymentHandle, name: str, route_prefix: str, url: str, *,
                 plan: CompiledPipeline | None = None, graph: str | None = None) -> None:
        self._loop = None if router_in_separate_loop() else _own_loop()
        self._entries: EntryPoints = self._on_loop(_options_of, handle)
        # the same entry points routed on each caller's loop (`_here`)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EntryPoints] = \
            weakref.WeakKeyDictionary()
        # one graph of an `sg.App`, whose ingress runs the graph it is named
        self._which = {} if graph is None else {"graph": graph}
        self.name = name
        self.route_prefix = route_prefix
        self.url = url
        self.plan = plan

    @classmethod
    def attach(cls, name: str, *, timeout_s: float = 60.0) -> PipelineHandle:
        """A handle to the servegraph application `name` already running on the Ray this
        process is connected to (deployed by `sg.serve`, `servegraph deploy`, `serve deploy`
        or another process), with the plan its driver serves. Raises DeployError naming the
        running applications when there is no such one, or when it is not servegraph's."""
        handle, text = cls.served(name, timeout_s=timeout_s)
        handle.plan = CompiledPipeline.model_validate_json(text)
        return handle

    @classmethod
    def served(cls, name: str, *, timeout_s: float = 60.0) -> tuple[PipelineHandle, str]:
        """A handle to the running application `name` and the plan JSON its ingress serves
        (a pipeline's, or an `sg.App`'s: `apphandle.attach` tells them apart)."""
        running = applications()
        if name not in running:
            raise DeployError(
                f"no Serve application named {name!r} is running (running: "
                f"{', '.join(sorted(running)) or 'none'}); deploy it first (sg.serve, "
                "servegraph deploy, serve deploy) or connect to the cluster it runs on "
                "(RAY_ADDRESS, or sg.connect(name, address=...))")
        prefix = route_prefix_of(name) or ""
        handle = cls(serve.get_app_handle(name), name, prefix, http_url(prefix))
        try:
            text = handle._served_plan(serve.get_app_handle(name), timeout_s)
        except Exception as exc:
            raise DeployError(
                f"Serve application {name!r} is not a servegraph pipeline: its ingress "
                f"serves no plan ({type(exc).__name__}: {exc})") from exc
        return handle, text

    def _served_plan(self, handle: DeploymentHandle, timeout_s: float) -> str:
        """The plan JSON the driver serves (`PipelineDriver.plan`), blocking."""
        method = handle.options(method_name="plan")
        if self._loop is None:
            return method.remote().result(timeout_s=timeout_s)
        return asyncio.run_coroutine_threadsafe(
            _awaited(method.remote), self._loop).result(timeout=timeout_s)

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` here, or, with a loop of our own, there (blocking for its result)."""
        if self._loop is None:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(_awaited(fn, *args), self._loop).result()

    def call(self, payload: Any = None, request_id: str | None = None, *,
             timeout_s: float | None = None, deadline_s: float | None = None) -> Any:
        """The outputs' values, blocking."""
        return self._blocking(self._entries.run, payload, request_id, timeout_s, deadline_s)

    async def acall(self, payload: Any = None, request_id: str | None = None, *,
                    timeout_s: float | None = None, deadline_s: float | None = None) -> Any:
        """The outputs' values (a streamed output read to the end: its list of chunks).
        `timeout_s`: how long this caller waits; `deadline_s`: the request's own budget
        (capped by the graph's `timeout_s`), past which the driver cancels its calls still
        running and raises a `DeadlineError` naming them."""
        return await self._awaiting("run", payload, request_id, timeout_s, deadline_s)

    remote = acall  # its first name (`await handle.remote(payload)`), kept

    def trace(self, payload: Any = None, request_id: str | None = None, *,
              timeout_s: float | None = None, deadline_s: float | None = None) -> Trace:
        """`atrace`, blocking."""
        try:
            return self._blocking(self._entries.trace, payload, request_id, timeout_s, deadline_s)
        except StageTimeoutError as exc:
            return Trace(self.name, executor="ray", error=exc)

    async def atrace(self, payload: Any = None, request_id: str | None = None, *,
                     timeout_s: float | None = None, deadline_s: float | None = None
                     ) -> Trace:
        """Run one request with a trace of every node (its `output`, or its `error`, which is
        kept in the trace, not raised). The driver then awaits every intermediate value, so
        the request costs a transfer per node: for tests and debugging."""
        try:
            return await self._awaiting("trace", payload, request_id, timeout_s,
                                        deadline_s)
        except StageTimeoutError as exc:
            return Trace(self.name, executor="ray", error=exc)

    def stream(self, payload: Any = None, request_id: str | None = None) -> Iterator[Any]:
        """The chunks of a streaming pipeline, blocking, each as it comes."""
        try:
            if self._loop is None:
                yield from self._entries.stream.remote(payload, request_id, **self._which)
                return
            chunks = self._on_loop(_started, self._entries.stream, payload, request_id, self._which)
            while True:
                try:
                    yield self._on_loop(anext, chunks)
                except StopAsyncIteration:
                    return
        except Exception as exc:
            raise as_pipeline_error(exc, self.name, request_id) from None

    async def astream(self, payload: Any = None, request_id: str | None = None
                      ) -> AsyncIterator[Any]:
        """The chunks of a streaming pipeline as they come, in an event loop."""
        try:
            async for chunk in self._here().stream.remote(payload, request_id, **self._which):
                yield chunk
        except Exception as exc:
            raise as_pipeline_error(exc, self.name, request_id) from None

    def _blocking(self, method: DeploymentHandle, payload: Any, request_id: str | None,
                  timeout_s: float | None, deadline_s: float | None = None) -> Any:
        """One blocking call of a driver method, on our own loop when we have one."""
        try:
            if self._loop is None:
                response = method.remote(payload, request_id, deadline_s, **self._which)
                return _cancelled_past(response, lambda: response.result(timeout_s=timeout_s))
            future = asyncio.run_coroutine_threadsafe(
                _awaited(method.remote, payload, request_id, deadline_s, **self._which),
                self._loop)
            return _cancelled_past(future, lambda: future.result(timeout=timeout_s))
        except Exception as exc:
            raise self._error(exc, request_id, timeout_s) from None

    async def _awaiting(self, method: str, payload: Any, request_id: str | None,
                        timeout_s: float | None, deadline_s: float | None = None) -> Any:
        """One awaited call of the driver's `method` ("run" or "trace") from the caller's
        loop."""
        try:
            entry = getattr(self._here(), method)
            async with asyncio.timeout(timeout_s):
                return await entry.remote(payload, request_id, deadline_s, **self._which)
        except Exception as exc:
            raise self._error(exc, request_id, timeout_s) from None

    def _here(self) -> EntryPoints:
        """The driver's entry points routed on the calling loop, made on the first call from
        it. Where Serve routes a handle on the loop it was first used in (its
        throughput-optimised mode), an awaited call then crosses no thread: only the blocking
        methods, which have no loop, go through ours."""
        loop = asyncio.get_running_loop()
        if self._loop is None or loop is self._loop:
            return self._entries
        found = self._loops.get(loop)
        if found is None:
            first = self._entries.run
            found = self._loops[loop] = _options_of(
                DeploymentHandle(first.deployment_name, first.app_name))
        return found

    def _error(self, error: Exception, request_id: str | None, timeout_s: float | None
               ) -> BaseException:
        """The servegraph error of a failed call; past `timeout_s`, a StageTimeoutError naming
        the pipeline (what `LocalExecutor` raises there)."""
        if timeout_s is not None and isinstance(error, TimeoutError) \
                and find_pipeline_error(error) is None:
            return StageTimeoutError(self.name, timeout_s, request_id=request_id)
        return as_pipeline_error(error, self.name, request_id)

    def shutdown(self, *, wait: bool = True) -> None:
        """Delete this pipeline's Serve application (Ray and Serve keep running); with
        `wait=False`, return at once while Serve stops its replicas."""
        serve.delete(self.name, _blocking=wait)

    def __enter__(self) -> PipelineHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<PipelineHandle {self.name!r} at {self.url}>"


class EntryPoints(NamedTuple):
    """The driver's three entry points, as handles of one router."""

    run: DeploymentHandle
    stream: DeploymentHandle
    trace: DeploymentHandle


def _options_of(handle: DeploymentHandle) -> EntryPoints:
    """The driver's entry points, built once (`handle.run` copies the handle each time)."""
    return EntryPoints(handle.options(method_name="run"),
                       handle.options(method_name="stream", stream=True),
                       handle.options(method_name="trace"))


def _cancelled_past(call: Any, result: Callable[[], Any]) -> Any:
    """`result()`, or past its timeout `call` cancelled: the request stops, not only the wait."""
    try:
        return result()
    except TimeoutError:
        call.cancel()
        raise


async def _awaited(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    result = fn(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


async def _started(method: DeploymentHandle, payload: Any, request_id: str | None,
                   which: dict[str, str]) -> Any:
    """A streaming call, started on the loop this runs on; its response generator is returned
    as it is (it looks awaitable, but awaiting it raises)."""
    return method.remote(payload, request_id, **which)


_LOOP: asyncio.AbstractEventLoop | None = None


def _own_loop() -> asyncio.AbstractEventLoop:
    """One event loop in a daemon thread for every blocking `call()` of this process."""
    global _LOOP
    if _LOOP is None:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="servegraph-handles",
                         daemon=True).start()
        _LOOP = loop
    return _LOOP

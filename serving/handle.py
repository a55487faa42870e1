"""`PipelineHandle`: the client side of a served pipeline, calling its driver deployment
blocking, awaited or streamed. Deploying a plan is `launch.serve_pipeline`; the replicas' side
(stage replicas, the driver) is `executors/ray`.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from ..executors.ray.errors import as_pipeline_error
from ..executors.trace import Trace
from .ray_private import router_in_separate_loop


class PipelineHandle:
    """A served pipeline: `call()` blocks, `await remote()` does not; HTTP at `url`.

    Where this process imported Serve in its throughput-optimised mode, a handle routes on the
    event loop it was first used in and cannot block outside one; every call then runs on one
    loop of our own in a daemon thread, so `call()`, `remote()` and `stream()` work alike."""

    def __init__(self, handle: DeploymentHandle, name: str, route_prefix: str, url: str) -> None:
        self._loop = None if router_in_separate_loop() else _own_loop()
        self._run, self._stream, self._trace = self._on_loop(_options_of, handle)
        self.name = name
        self.route_prefix = route_prefix
        self.url = url

    def _on_loop(self, fn: Callable[..., Any], *args: Any,
                 timeout_s: float | None = None) -> Any:
        """`fn(*args)` here, or, with a loop of our own, there (blocking for its result)."""
        if self._loop is None:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(_awaited(fn, *args), self._loop).result(
            timeout=timeout_s)

    def _result(self, handle: DeploymentHandle, payload: Any, timeout_s: float | None) -> Any:
        """One blocking call of a driver method, on our own loop when we have one."""
        if self._loop is None:
            return handle.remote(payload).result(timeout_s=timeout_s)
        return self._on_loop(handle.remote, payload, timeout_s=timeout_s)

    def call(self, payload: Any = None, *, timeout_s: float | None = None) -> Any:
        try:
            return self._result(self._run, payload, timeout_s)
        except Exception as exc:
            raise as_pipeline_error(exc, self.name) from None

    async def remote(self, payload: Any = None) -> Any:
        try:
            if self._loop is None:
                return await self._run.remote(payload)
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                _awaited(self._run.remote, payload), self._loop))
        except Exception as exc:
            raise as_pipeline_error(exc, self.name) from None

    def trace(self, payload: Any = None, *, timeout_s: float | None = None) -> Trace:
        """Run one request with a trace of every node (its `output`, or its `error`, which is
        kept in the trace, not raised). The driver then awaits every intermediate value, so
        the request costs a transfer per node: for tests and debugging."""
        try:
            return self._result(self._trace, payload, timeout_s)
        except Exception as exc:
            raise as_pipeline_error(exc, self.name) from None

    def stream(self, payload: Any = None) -> Iterator[Any]:
        """The chunks of a streaming pipeline as they come (blocking iteration)."""
        try:
            if self._loop is None:
                yield from self._stream.remote(payload)
                return
            chunks = self._on_loop(lambda: aiter(self._stream.remote(payload)))
            while True:
                try:
                    yield self._on_loop(anext, chunks)
                except StopAsyncIteration:
                    return
        except Exception as exc:
            raise as_pipeline_error(exc, self.name) from None

    async def astream(self, payload: Any = None) -> AsyncIterator[Any]:
        """The chunks of a streaming pipeline as they come, in an event loop."""
        try:
            if self._loop is None:
                async for chunk in self._stream.remote(payload):
                    yield chunk
                return
            loop = self._loop
            chunks = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                _awaited(lambda: aiter(self._stream.remote(payload))), loop))
            while True:
                try:
                    yield await asyncio.wrap_future(
                        asyncio.run_coroutine_threadsafe(anext(chunks), loop))
                except StopAsyncIteration:
                    return
        except Exception as exc:
            raise as_pipeline_error(exc, self.name) from None

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


def _options_of(handle: DeploymentHandle) -> tuple[DeploymentHandle, ...]:
    """The driver's entry points, built once (`handle.run` copies the handle each time)."""
    return (handle.options(method_name="run"),
            handle.options(method_name="stream", stream=True),
            handle.options(method_name="trace"))


async def _awaited(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    return await result if inspect.isawaitable(result) else result


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

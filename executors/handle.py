"""The client side of a served pipeline: `serve_pipeline` deploys a plan on Ray Serve (an
embedded local Ray unless `RAY_ADDRESS` names one, sized and checked so that every replica
fits) and returns a `PipelineHandle`, which calls the driver blocking, awaited or streamed.
The replicas' side (stage replicas, the driver) is `executors/serve.py`.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from ..compiler import CompiledPipeline, as_plan
from ..compiler.pack import SERVE_ENV
from ..compiler.resources import AUTO_MAX_REPLICAS
from ..dag import Graph
from ..errors import DeployError
from .proxy import PROXY_ENV
from .serve import as_pipeline_error, build_app
from .trace import Trace


class PipelineHandle:
    """A served pipeline: `call()` blocks, `await remote()` does not; HTTP at `url`.

    Where this process imported Serve in its throughput-optimised mode, a handle routes on the
    event loop it was first used in and cannot block outside one; every call then runs on one
    loop of our own in a daemon thread, so `call()`, `remote()` and `stream()` work alike."""

    def __init__(self, handle: DeploymentHandle, name: str, route_prefix: str, url: str) -> None:
        self._loop = None if _router_in_separate_loop() else _own_loop()
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


def _router_in_separate_loop() -> bool:
    from ray.serve._private import constants

    return bool(getattr(constants, "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP", True))


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


def serve_pipeline(graph_or_plan: Graph | CompiledPipeline, *, name: str | None = None,
                   route_prefix: str | None = None, http_port: int | None = None,
                   diagram_svg: bytes | None = None) -> PipelineHandle:
    """Deploy on Ray Serve. Connects to `RAY_ADDRESS` when set, else starts an embedded local
    Ray sized to hold the plan's replicas; returns once every deployment is running.
    `diagram_svg`, rendered by the caller, is served at `GET <route>/-/graph.svg`."""
    plan = as_plan(graph_or_plan)
    ensure_ray(plan)
    check_fits(plan, ray.cluster_resources())
    if http_port is not None:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    name = name or plan.name
    route_prefix = route_prefix or f"/{plan.name}"
    handle = serve.run(build_app(plan, diagram_svg), name=name, route_prefix=route_prefix)
    return PipelineHandle(handle, name, route_prefix, _http_url(route_prefix))





# Logical CPUs of an embedded Ray: Serve reserves one per replica by default, and a laptop
# serving a few pipelines side by side must not leave replicas pending for want of a logical
# core. Logical CPUs only gate scheduling; processes share the real cores either way.
EMBEDDED_MIN_CPUS = 16


# Serve's fastest safe settings for the embedded Ray (Ray >= 2.55): user code and the router
# on the replica's own loop, buffered request logs, gRPC between deployments. Measured on the
# hand-written diamond (2 cores, concurrency 32): 95 -> 217 req/s. Replicas and the Serve
# controller read it when Ray starts them; this process's handles keep the settings Serve was
# imported with, and `PipelineHandle.call` works under either.
FAST_PATH_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def ensure_ray(plan: CompiledPipeline) -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    # the Serve controller this Ray starts places replicas as the pack pass planned them, and
    # runs its replicas in Serve's throughput-optimised mode (see FAST_PATH_ENV); its proxies
    # answer a request whose ingress replica died with a 502 naming it (executors/proxy.py)
    for name, value in {**SERVE_ENV, **FAST_PATH_ENV, **PROXY_ENV}.items():
        os.environ.setdefault(name, value)
    # address="local": a new embedded Ray even when `ray start` left a cluster on this machine
    ray.init(address="local",
             num_cpus=max(EMBEDDED_MIN_CPUS, os.cpu_count() or 1, cpus_needed(plan)),
             include_dashboard=False)


def cpus_needed(plan: CompiledPipeline) -> int:
    """Logical CPUs for every replica the plan may run (autoscaling at `max_replicas`)."""
    return int(resources_needed(plan, at_most=True)["CPU"] + 0.999)


def resources_needed(plan: CompiledPipeline, *, at_most: bool = False) -> dict[str, float]:
    """CPUs and GPUs the plan's replicas reserve: the replicas `serve.run` waits for, or
    (`at_most`) the most autoscaling may start."""
    needed = {"CPU": 0.0, "GPU": 0.0}
    for stage in [*plan.served(), plan.driver]:
        for resource in needed:
            needed[resource] += _replicas(stage.options, at_most) * _per_replica(
                stage.options, resource)
    return needed


def check_fits(plan: CompiledPipeline, cluster: dict[str, float]) -> None:
    """Fail now, naming the shortfall, rather than let `serve.run` wait forever for replicas
    that the cluster cannot hold."""
    for resource, amount in resources_needed(plan).items():
        available = cluster.get(resource, 0.0)
        if amount <= available + 1e-9:
            continue
        option = _OPTION[resource]
        per_stage = ", ".join(
            f"{stage.name} {_replicas(stage.options, False)} x {each:g}"
            for stage in plan.served() if (each := _per_replica(stage.options, resource)))
        raise DeployError(
            f"pipeline {plan.name!r} needs {amount:g} {resource} for its replicas ({per_stage}), "
            f"but the Ray cluster has {available:g}; lower num_replicas or {option}, or give "
            f"Ray more (ray.init({option}=...))")


_OPTION = {"CPU": "num_cpus", "GPU": "num_gpus"}


def _replicas(options: dict[str, Any], at_most: bool) -> int:
    auto = options.get("autoscaling_config")
    if options.get("num_replicas") == "auto" or auto:
        auto = auto or {}
        if at_most:  # num_replicas="auto" defaults to Serve's max of 100
            return int(auto.get("max_replicas", AUTO_MAX_REPLICAS
                                if options.get("num_replicas") == "auto" else 1))
        return int(auto.get("initial_replicas", auto.get("min_replicas", 1)))
    return int(options.get("num_replicas", 1))


def _per_replica(options: dict[str, Any], resource: str) -> float:
    """Serve's default is one CPU and no GPU per replica."""
    default = 1.0 if resource == "CPU" else 0.0
    return float((options.get("ray_actor_options") or {}).get(_OPTION[resource], default))


def _http_url(route_prefix: str) -> str:
    try:
        from ray.serve.context import _get_global_client

        config = _get_global_client().http_config
        host = "127.0.0.1" if config.host in ("0.0.0.0", "", None) else config.host
        return f"http://{host}:{config.port}{route_prefix}"
    except Exception:
        return f"http://127.0.0.1:8000{route_prefix}"

"""A stage's replica on Ray Serve: the user's object, called by node id.

The driver calls `handle.remote(node_id, shape, *leaves)`. Ray resolves a `DeploymentResponse`
only as a top-level argument, so a leaf that is a list of responses (a map's results) is
spread into the arguments, and `shape` tells the replica how to gather it back (`flatten` and
`unflatten`). A stream a stage reads is passed unstarted (`StreamCall`) and opened here.

A `sg.batch` method is batched by servegraph's `Batcher` (as on the local executor and in the
driver: a dynamic batcher, not `serve.batch`) around `batching.isolating(method)`: the
split-and-retry that isolates a failing item runs inside a batch's call, and each caller gets
its own item's value or error. A traced request calls `reported` instead
of `__call__`: the same call, answered as an `Outcome` that also says how often the call's
batch was split.

A multiplexed stage (`sg.multiplexed`) gets Serve's own loader (`serve_models`), and a call
the driver routed by model id runs with that id as `sg.multiplexed_model_id()`.

A call asks for the stage's own method by name (`serve_method`), which the replica answers
with `__call__` (or `stream`): Serve's access log then names it (`CALL encode OK 3.1ms`).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from ...compiler import CompiledPipeline, NodePlan
from ...dag import batch_spec, health_check, multiplex_spec
from ...dag.deployment import MultiplexSpec, serving_model
from ...errors import PipelineError, StageError
from .. import tracing
from ..batcher import Batcher
from ..batching import Outcome, noted, planned
from ..deadline import DEADLINE, until
from ..guard import CallPolicy, attempt, call_guarded, chunks_guarded
from ..program import Program, Step
from .errors import find_pipeline_error
from .metrics import stage_metrics

# How a call's leaves were spread into top-level arguments, one entry per spread leaf:
# ("list", index, length) for a list holding responses, ("chunks", index, length) for a
# chunked map's responses (joined back into one list), and ("stream", index, stage, node id,
# its own shape, length) for a stream the called replica opens itself.
ArgShape = tuple[tuple[Any, ...], ...]
OpenStream = Callable[[str, str, ArgShape, Sequence[Any]], Any]


class Chunks:
    """A chunked map's value on Serve: the responses of its chunk calls, in order, each a list
    of results. It passes unawaited into the calls that read it (spread into their
    arguments, joined again in their replica, `flatten`); awaited, it is the whole list."""

    __slots__ = ("responses",)

    def __init__(self, responses: list[DeploymentResponse]) -> None:
        self.responses = responses

    def __await__(self) -> Any:
        return self._joined().__await__()

    async def _joined(self) -> list[Any]:
        return [value for part in await asyncio.gather(*self.responses) for value in part]


@dataclass(frozen=True)
class StreamCall:
    """A streaming node's call, not yet started: its reader's replica starts it with
    `handle.options(stream=True)` and reads the chunks itself (Serve cannot pass a streaming
    response into another call, ray-project/ray#57098), or the driver does for an output."""

    stage: str
    node_id: str
    shape: ArgShape
    flat: tuple[Any, ...]


def flatten(leaves: Sequence[Any]) -> tuple[list[Any], ArgShape]:
    """Spread every list holding a response, and every stream's own arguments, into
    top-level arguments, which Serve resolves; `shape` says how to gather them back."""
    flat: list[Any] = []
    shape: list[tuple[Any, ...]] = []
    for index, leaf in enumerate(leaves):
        if isinstance(leaf, StreamCall):
            shape.append(("stream", index, leaf.stage, leaf.node_id, leaf.shape,
                           len(leaf.flat)))
            flat.extend(leaf.flat)
        elif isinstance(leaf, Chunks):
            shape.append(("chunks", index, len(leaf.responses)))
            flat.extend(leaf.responses)
        elif isinstance(leaf, list) and any(isinstance(v, DeploymentResponse) for v in leaf):
            shape.append(("list", index, len(leaf)))
            flat.extend(leaf)
        else:
            flat.append(leaf)
    return flat, tuple(shape)


def unflatten(flat: Sequence[Any], shape: ArgShape,
              open_stream: OpenStream | None = None) -> list[Any]:
    if not shape:
        return list(flat)
    leaves: list[Any] = []
    spread = {entry[1]: entry for entry in shape}
    position = 0
    while position < len(flat) or len(leaves) in spread:
        entry = spread.get(len(leaves))
        if entry is None:
            leaves.append(flat[position])
            position += 1
            continue
        length = entry[-1]
        part = flat[position:position + length]
        position += length
        if entry[0] == "list":
            leaves.append(list(part))
        elif entry[0] == "chunks":
            leaves.append([value for chunk in part for value in chunk])
        else:
            assert open_stream is not None, "a stream reaches a replica that cannot open it"
            _, _, stage, node_id, inner, _ = entry
            leaves.append(open_stream(stage, node_id, inner, part))
    return leaves


# names a replica holds for itself, or that Serve calls on it (its health check and
# reconfigure hooks): a stage method by one of these names is asked for as `__call__`
REPLICA_NAMES = frozenset({"stage", "calls", "chunk", "check_health", "reconfigure",
                           "record_routing_stats", "record_replica_metadata"})


def serve_method(node: NodePlan) -> str:
    """The method a call of `node` asks its stage's replica for, which Serve's access log
    names: the stage's own method (the replica answers it), or `__call__` (`stream` for a
    streaming node) for a function stage, or where the name is the replica's own."""
    method = node.method
    if not method or method.startswith("_") or method in REPLICA_NAMES or \
            hasattr(StageReplica, method):
        return "stream" if node.stream else "__call__"
    return method


def serve_methods(plan: CompiledPipeline) -> dict[str, str]:
    """`serve_method` of every call node of the plan, by node id."""
    return {node.id: serve_method(node) for node in plan.nodes if node.stage is not None}


def serve_models(target: Any, spec: MultiplexSpec) -> None:
    """Make the stage's loader Serve's own on this instance: `serve.multiplexed` keeps the
    replica's models (least recently used dropped) and reports their ids to Serve's router,
    which sends a call for a model to a replica that holds it. The instance attribute hides
    the class's `sg.multiplexed` loader, so the stage's `await self.load(id)` reaches it."""
    loader = spec.loader

    async def load(model_id: str) -> Any:
        return await loader(target, model_id)

    setattr(target, spec.name, serve.multiplexed(
        max_num_models_per_replica=spec.max_models_per_replica)(load))


class StageReplica:
    """A replica of one stage's deployment: the user's object, called by node id. A stage's
    `timeout_s` and `max_retries` are enforced here, around the user's call (see `guard`).
    Each method of the stage that a node calls is an attribute too (`serve_method`), the
    replica's `__call__` (or `stream`) under the method's name. Serve's replica hooks reach
    the stage: `reconfigure` (its `user_config`) and, where the stage has one taking no
    arguments, `check_health` (`dag.health_check`)."""

    def __init__(self, plan: CompiledPipeline | Sequence[CompiledPipeline],
                 stage_name: str) -> None:
        # a stage an application's graphs share (`sg.App`) serves the calls of each graph's
        # plan: their node ids differ (`compiler.app`), a batched method's queue is one
        plans = [plan] if isinstance(plan, CompiledPipeline) else list(plan)
        stage = plans[0].stage(stage_name)
        self.stage = stage
        begun = time.perf_counter()
        target = plans[0].build_stage(stage)
        self._metrics = stage_metrics(stage_name)  # None with SERVEGRAPH_METRICS=0
        if self._metrics is not None:
            self._metrics.started(time.perf_counter() - begun)
        self._target = target
        loader = multiplex_spec(target) if stage.kind == "class" else None
        if loader is not None:
            serve_models(target, loader)
        health = health_check(target)
        if health is not None:  # Serve calls it every health_check_period_s
            self.check_health = health
        self.calls: dict[str, tuple[Step, Any, bool, CallPolicy]] = {}
        self._stream_handles: dict[str, DeploymentHandle] = {}
        # the streams this stage reads are others' nodes
        self._methods = {node: method for one in plans
                         for node, method in serve_methods(one).items()}
        batched: dict[str, Any] = {}
        for plan, step in ((one, step) for one in plans for step in Program(one).steps):
            node = step.node
            if node.stage != stage_name:
                continue
            fn = getattr(target, node.method) if node.method else target
            spec = batch_spec(getattr(fn, "__func__", fn))
            if spec is not None:  # one queue per method: every call node on it shares it
                spec = planned(spec, plan, stage_name, node.method)
                key = node.method or ""
                if key not in batched:
                    batched[key] = Batcher(fn, spec, around=lambda run, key=key: self._sized(
                        key, run)).__call__
                fn = batched[key]
            self.calls[node.id] = (step, fn, inspect.iscoroutinefunction(fn),
                                   CallPolicy.of(plan, node))
            if node.method and self._methods[node.id] == node.method:
                setattr(self, node.method, self.stream if node.stream else self.__call__)

    async def __call__(self, node_id: str, shape: ArgShape, *flat: Any,
                       deadline: float | None = None,
                       otel: dict[str, str] | None = None) -> Any:
        """One call; `deadline`: its request's (see `deadline`), bounding it here; `otel`:
        the trace context its span joins (`tracing`)."""
        step = self.calls[node_id][0]
        with until(deadline), tracing.remote_span(self.stage.name, step.node, otel):
            if step.model_id is None:
                return await self._call(node_id, shape, flat)
            # the id the driver routed by (`multiplexed_model_id`), for
            # `sg.multiplexed_model_id()`
            with serving_model(serve.get_multiplexed_model_id()):
                return await self._call(node_id, shape, flat)

    async def _call(self, node_id: str, shape: ArgShape, flat: Sequence[Any]) -> Any:
        step, fn, is_async, policy = self.calls[node_id]
        args, kwargs = step.build(unflatten(flat, shape, self._open))  # type: ignore[misc]
        return await self._invoke(step, fn, is_async, policy, args, kwargs)

    async def chunk(self, node_id: str, shape: ArgShape, offset: int, *flat: Any,
                    deadline: float | None = None,
                    otel: dict[str, str] | None = None) -> list[Any]:
        with until(deadline), tracing.remote_span(self.stage.name, self.calls[node_id][0].node,
                                                  otel):
            return await self._chunk(node_id, shape, offset, flat)

    async def _chunk(self, node_id: str, shape: ArgShape, offset: int,
                     flat: Sequence[Any]) -> list[Any]:
        """Part of a map's list (its elements from `offset` on, the first leaf), each called
        as `__call__` calls one (its `timeout_s` and retries per element), async ones
        concurrently (a batched method batches them), sync ones in turn; the results in
        order. A failure names its element's index and stops the chunk's other calls."""
        step, fn, is_async, policy = self.calls[node_id]
        items, *rest = unflatten(flat, shape, self._open)

        async def element(index: int, item: Any) -> Any:
            args, kwargs = step.build([item, *rest])  # type: ignore[misc]
            try:
                return await self._invoke(step, fn, is_async, policy, args, kwargs)
            except StageError as exc:
                raise exc.at_element(offset + index) from None

        if not is_async and not policy.active:
            return [await element(index, item) for index, item in enumerate(items)]
        calls = [asyncio.ensure_future(element(index, item))
                 for index, item in enumerate(items)]
        try:
            return list(await asyncio.gather(*calls))
        finally:
            for call in calls:
                if not call.done():
                    call.cancel()

    def _sized(self, method: str, fn: Any) -> Any:
        """A batch function recording its batches' sizes (`metrics`), when metrics are on."""
        return fn if self._metrics is None else self._metrics.batched(method, fn)

    async def _invoke(self, step: Step, fn: Any, is_async: bool, policy: CallPolicy,
                      args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._metrics is None:
            return await self._guarded(step, fn, is_async, policy, args, kwargs)
        with self._metrics.call(step.node.id):
            return await self._guarded(step, fn, is_async, policy, args, kwargs)

    async def _guarded(self, step: Step, fn: Any, is_async: bool, policy: CallPolicy,
                       args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if policy.active or DEADLINE.get() is not None:
            return await call_guarded(
                attempt(fn, args, kwargs, is_async=is_async, timeout_s=policy.timeout_s),
                policy, lambda exc: self._failed(exc, step))
        try:
            result = fn(*args, **kwargs)
            return await result if is_async else result
        except Exception as exc:
            raise self._failed(exc, step) from None

    async def reconfigure(self, config: Any) -> None:
        """Serve's hook for `user_config`, forwarded to the stage's own `reconfigure` (sync or
        async): after `__init__`, and on each redeploy that changes the config, without a
        restart. Serve calls it only when the stage has a user_config, which the validate
        pass allows only on a class with `reconfigure`; an override without one (a fake in the
        stage's place) is left as it is, as `run_local` leaves it."""
        method = getattr(self._target, "reconfigure", None)
        result = method(config) if method is not None else None
        if inspect.isawaitable(result):
            await result

    async def reported(self, node_id: str, shape: ArgShape, *flat: Any,
                       deadline: float | None = None,
                       otel: dict[str, str] | None = None) -> Outcome:
        """`__call__` for a traced request: its value or its servegraph error, with the
        splits its batch made before settling it (the driver's trace shows them)."""
        with noted() as note:
            try:
                value = await self(node_id, shape, *flat, deadline=deadline, otel=otel)
            except PipelineError as exc:
                return Outcome(error=exc, splits=note.splits)
        return Outcome(value=value, splits=note.splits)

    async def stream(self, node_id: str, shape: ArgShape, *flat: Any) -> AsyncIterator[Any]:
        """A streaming node: the stage's async generator, chunk by chunk."""
        step, fn, _, policy = self.calls[node_id]
        args, kwargs = step.build(unflatten(flat, shape, self._open))  # type: ignore[misc]
        chunks = fn(*args, **kwargs)
        if policy.timeout_s is not None:
            chunks = chunks_guarded(chunks, policy, lambda exc: self._failed(exc, step))
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as exc:
            raise self._failed(exc, step) from None

    def _failed(self, exc: Exception, step: Step) -> BaseException:
        """A servegraph error met on the way (an upstream stream's) passes on as it is."""
        found = find_pipeline_error(exc)
        if found is not None:
            return found
        return StageError(self.stage.name, str(exc), site=step.node.site,
                          error_type=type(exc).__name__)

    def _open(self, stage: str, node_id: str, shape: ArgShape, flat: Sequence[Any]) -> Any:
        """Start an upstream streaming call; its chunks arrive as this stage reads them."""
        handle = self._stream_handles.get(node_id)
        if handle is None:
            app = serve.get_replica_context().app_name
            handle = serve.get_deployment_handle(stage, app).options(
                method_name=self._methods.get(node_id, "stream"), stream=True)
            self._stream_handles[node_id] = handle
        return handle.remote(node_id, shape, *flat)

"""The Ray Serve runner: one Serve deployment per actor group, plus the ingress driver.

The driver walks the plan with the one scheduling core. A call becomes
`handle.remote(node_id, layout, *leaves)` on the stage's deployment, returning a
`DeploymentResponse` that is passed, unawaited, straight into the calls that read it; Serve
resolves it where it is needed, so the driver adds no hop of its own. Ray resolves a response
only as a top-level argument, so a leaf that is a list of responses (a map's results) is
spread into the arguments and `layout` tells the replica how to gather it back.
Deploying a plan and calling it from outside is `executors/handle.py`.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.exceptions import ActorDiedError, RayError
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.requests import Request
from starlette.responses import Response

from ..compiler import CompiledPipeline
from ..dag import batch_spec
from ..errors import PipelineError, StageError
from .core import Program, Runner, Step, execute, stream
from .fused import FusedRunner
from .guard import CallPolicy, attempt, call_guarded, chunks_guarded
from .ingress import handle_http, plan_views
from .local import _instances, _LocalRunner
from .trace import Trace

# How a call's leaves were spread into top-level arguments, one entry per spread leaf:
# ("list", index, length) for a list holding responses, and ("stream", index, stage, node id,
# its own layout, length) for a stream the called replica opens itself.
Layout = tuple[tuple[Any, ...], ...]
OpenStream = Callable[[str, str, Layout, Sequence[Any]], Any]


@dataclass(frozen=True)
class StreamCall:
    """A streaming node's call, not yet started: its reader's replica starts it with
    `handle.options(stream=True)` and reads the chunks itself (Serve cannot pass a streaming
    response into another call, ray-project/ray#57098), or the driver does for an output."""

    stage: str
    node_id: str
    layout: Layout
    flat: tuple[Any, ...]


def flatten(leaves: Sequence[Any]) -> tuple[list[Any], Layout]:
    """Spread every list holding a response, and every stream's own arguments, into
    top-level arguments, which Serve resolves; `layout` says how to gather them back."""
    flat: list[Any] = []
    layout: list[tuple[Any, ...]] = []
    for index, leaf in enumerate(leaves):
        if isinstance(leaf, StreamCall):
            layout.append(("stream", index, leaf.stage, leaf.node_id, leaf.layout,
                           len(leaf.flat)))
            flat.extend(leaf.flat)
        elif isinstance(leaf, list) and any(isinstance(v, DeploymentResponse) for v in leaf):
            layout.append(("list", index, len(leaf)))
            flat.extend(leaf)
        else:
            flat.append(leaf)
    return flat, tuple(layout)


def unflatten(flat: Sequence[Any], layout: Layout,
              open_stream: OpenStream | None = None) -> list[Any]:
    if not layout:
        return list(flat)
    leaves: list[Any] = []
    spread = {entry[1]: entry for entry in layout}
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
        else:
            assert open_stream is not None, "a stream reaches a replica that cannot open it"
            _, _, stage, node_id, inner, _ = entry
            leaves.append(open_stream(stage, node_id, inner, part))
    return leaves


class StageReplica:
    """A replica of one stage's deployment: the user's object, called by node id. A stage's
    `timeout_s` and `max_retries` are enforced here, around the user's call (see `guard`)."""

    def __init__(self, plan: CompiledPipeline, stage_name: str) -> None:
        stage = plan.stage(stage_name)
        self.stage = stage
        target = plan.build_stage(stage)
        self.calls: dict[str, tuple[Step, Any, bool, CallPolicy]] = {}
        self._stream_handles: dict[str, DeploymentHandle] = {}
        batched: dict[str, Any] = {}
        for step in Program(plan).steps:
            node = step.node
            if node.stage != stage_name:
                continue
            fn = getattr(target, node.method) if node.method else target
            spec = batch_spec(getattr(fn, "__func__", fn))
            if spec is not None:  # one queue per method: every call node on it shares it
                key = node.method or ""
                if key not in batched:
                    batched[key] = serve.batch(
                        max_batch_size=spec.max_batch_size,
                        batch_wait_timeout_s=spec.batch_wait_timeout_s,
                        max_concurrent_batches=spec.max_concurrent_batches,
                        batch_size_fn=spec.batch_size_fn,
                    )(fn)
                fn = batched[key]
            self.calls[node.id] = (step, fn, inspect.iscoroutinefunction(fn),
                                   CallPolicy.of(plan, node))

    async def __call__(self, node_id: str, layout: Layout, *flat: Any) -> Any:
        step, fn, is_async, policy = self.calls[node_id]
        args, kwargs = step.build(unflatten(flat, layout, self._open))  # type: ignore[misc]
        if policy.active:
            return await call_guarded(
                attempt(fn, args, kwargs, is_async=is_async, timeout_s=policy.timeout_s),
                policy, lambda exc: self._failed(exc, step))
        try:
            result = fn(*args, **kwargs)
            return await result if is_async else result
        except Exception as exc:
            raise self._failed(exc, step) from None

    async def stream(self, node_id: str, layout: Layout, *flat: Any) -> AsyncIterator[Any]:
        """A streaming node: the stage's async generator, chunk by chunk."""
        step, fn, _, policy = self.calls[node_id]
        args, kwargs = step.build(unflatten(flat, layout, self._open))  # type: ignore[misc]
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
        found = _find_pipeline_error(exc)
        if found is not None:
            return found
        return StageError(self.stage.name, str(exc), site=step.node.site,
                          error_type=type(exc).__name__)

    def _open(self, stage: str, node_id: str, layout: Layout, flat: Sequence[Any]) -> Any:
        """Start an upstream streaming call; its chunks arrive as this stage reads them."""
        handle = self._stream_handles.get(stage)
        if handle is None:
            app = serve.get_replica_context().app_name
            handle = serve.get_deployment_handle(stage, app).options(
                method_name="stream", stream=True)
            self._stream_handles[stage] = handle
        return handle.remote(node_id, layout, *flat)


class _ServeRunner:
    def __init__(self, handles: dict[str, DeploymentHandle], driver_name: str) -> None:
        self.handles = handles
        self.stream_handles: dict[str, DeploymentHandle] = {}
        self.driver_name = driver_name

    def call(self, step: Step, leaves: list[Any]) -> Any:
        flat, layout = flatten(leaves)
        node = step.node
        if node.stream:
            return StreamCall(node.stage, node.id, layout, tuple(flat))  # type: ignore[arg-type]
        return self.handles[node.stage].remote(node.id, layout, *flat)  # type: ignore[index]

    def open(self, stream: StreamCall) -> AsyncIterator[Any]:
        handle = self.stream_handles.get(stream.stage)
        if handle is None:
            handle = self.handles[stream.stage].options(method_name="stream", stream=True)
            self.stream_handles[stream.stage] = handle
        return handle.remote(stream.node_id, stream.layout, *stream.flat)

    def is_future(self, value: Any) -> bool:
        return isinstance(value, DeploymentResponse)

    async def resolve(self, value: Any) -> Any:
        return await value

    def on_error(self, error: BaseException, request_id: str | None) -> BaseException:
        return as_pipeline_error(error, self.driver_name, request_id)

    def discard(self, value: DeploymentResponse) -> None:
        """Leave it: Serve logs nothing for a response never awaited, and
        `DeploymentResponse.cancel()` blocks the driver's loop until a replica is assigned,
        then raises the upstream error. Sibling calls finish on their replicas, unread."""
        return None


def as_pipeline_error(error: BaseException, where: str, request_id: str | None = None
                      ) -> BaseException:
    """The servegraph error inside a Ray error (a stage's StageError travels as its cause)."""
    if isinstance(error, asyncio.CancelledError):
        return error
    found = _find_pipeline_error(error)
    if found is None:
        dead = _dead_stage(error)
        if dead is not None:
            found = StageError(dead, "its replica died before finishing the call; Serve is "
                               "starting another", error_type="ActorDiedError")
        else:
            found = StageError(where, f"{type(error).__name__}: {error}".splitlines()[0],
                               error_type=type(error).__name__)
    if request_id and hasattr(found, "request_id"):
        found.request_id = request_id
    return found


# The name Serve gives a replica actor (`SERVE_REPLICA::<app>#<deployment>#<id>`), which Ray
# writes into an ActorDiedError, also when Serve wraps it as an upstream's death.
_REPLICA_NAME = re.compile(r"SERVE_REPLICA::[^#\s]*#([^#\s]+)#")


def _dead_stage(error: BaseException) -> str | None:
    """The stage whose replica died, when a Ray error in `error`'s chain says so: the called
    stage's own, or an upstream whose unfinished result was passed on."""
    for link in _chain(error):
        if isinstance(link, ActorDiedError) and (match := _REPLICA_NAME.search(str(link))):
            return match.group(1)
    return None


def _find_pipeline_error(error: BaseException | None) -> PipelineError | None:
    return next((link for link in _chain(error)
                 if isinstance(link, PipelineError) and not isinstance(link, RayError)), None)


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """`error`, then what caused it, each once: a Ray task error's `cause` (the exception its
    task raised), else `__cause__`."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        cause = getattr(error, "cause", None)
        error = cause if isinstance(cause, BaseException) else error.__cause__


class PipelineDriver:
    """The ingress deployment: walks the plan for each request, over a handle or HTTP."""

    def __init__(self, plan: CompiledPipeline, handles: dict[str, DeploymentHandle],
                 diagram_svg: bytes | None = None) -> None:
        self.program = Program(plan)
        remote = _ServeRunner(handles, plan.driver.name)
        fused = plan.fused()  # stages the fuse pass put in this replica: built and called here
        self.runner: Runner = remote if not fused else FusedRunner(
            _LocalRunner(self.program, _instances(plan, fused), strict=False), remote)
        self.views = plan_views(plan, diagram_svg)

    async def run(self, payload: Any, request_id: str | None = None) -> Any:
        return await execute(self.program, payload, self.runner, request_id)

    async def trace(self, payload: Any, request_id: str | None = None) -> Trace:
        """Run one request with a trace (see `trace`: this driver then awaits every
        intermediate value); a servegraph error is kept in the trace, not raised."""
        trace = Trace(self.program.plan.name, executor="ray")
        try:
            await execute(self.program, payload, self.runner, request_id, trace=trace)
        except PipelineError:
            pass
        return trace

    async def stream(self, payload: Any, request_id: str | None = None) -> AsyncIterator[Any]:
        """The chunks of a streaming pipeline (call with `handle.options(stream=True)`)."""
        async for chunk in stream(self.program, payload, self.runner, request_id):
            yield chunk

    def plan(self) -> str:
        """The compiled plan as JSON (for `servegraph status --render`)."""
        return self.program.plan.model_dump_json()

    async def __call__(self, request: Request) -> Response:
        return await handle_http(request, self.run, echo_request_id=False, views=self.views,
                                 stream=self.stream if self.program.streams else None)


def build_app(plan: CompiledPipeline, diagram_svg: bytes | None = None) -> Any:
    """The Serve application: a bound driver holding a bound deployment per stage not fused
    into the driver (the driver builds and calls the fused ones itself).

    Stages are bound largest GPU share first: Serve creates replicas in that order, so Ray's
    best-fit placement meets them in the decreasing order the pack pass planned with."""
    stages = {
        # a copy: Ray fills Serve's defaults into the ray_actor_options dict it is given
        stage.name: serve.deployment(StageReplica).options(**copy.deepcopy(stage.options))
        .bind(plan, stage.name)
        for stage in deploy_order(plan)
    }
    driver = serve.deployment(PipelineDriver).options(name=plan.driver.name,
                                                      **copy.deepcopy(plan.driver.options))
    return driver.bind(plan, stages, diagram_svg)


def deploy_order(plan: CompiledPipeline) -> list[Any]:
    """The deployed stages, whole GPUs and larger fractions first (stable otherwise)."""
    return sorted(plan.served(), key=lambda stage: -float(
        (stage.options.get("ray_actor_options") or {}).get("num_gpus") or 0))

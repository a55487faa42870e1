"""The ingress driver on Ray Serve: walks the plan with the one scheduling core.

A call becomes `handle.remote(node_id, shape, *leaves)` on the stage's deployment (see
`replica`), returning a `DeploymentResponse` that is passed, unawaited, straight into the calls
that read it; Serve resolves it where it is needed, so the driver adds no hop of its own. The
stages the fuse pass put in the driver are built and called here, in-process (`fused`).
Deploying a plan and calling it from outside is `serving/`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.requests import Request
from starlette.responses import Response

from ...compiler import CompiledPipeline, StagePlan
from ...compiler.plan import MapPlan
from ...dag.deployment import require_model_id
from ...errors import StageError
from ...web.front import Endpoint
from ...web.grpc_ingress import GrpcIngress
from .. import tracing
from ..batching import noting, settle
from ..core import execute, stream
from ..deadline import DEADLINE, past_deadline
from ..local.runner import LocalRunner, Watch, build_instances
from ..program import Observer, Program, Runner, Step, awaited, holds
from ..trace import Trace, record
from .errors import as_pipeline_error
from .fused import FusedRunner
from .metrics import PipelineMetrics, pipeline_metrics, stage_metrics
from .ray_private import router_in_separate_loop, serve_request_id
from .replica import Chunks, StreamCall, flatten, serve_methods


class ServeRunner:
    """Calls the stages' deployments through their handles. A traced call (one whose caller
    notes batch splits, see `batching`) asks the replica's `reported` method instead, and is
    an asyncio task that settles its `Outcome`: the trace awaits every value anyway. A call
    asks for its node's method by name (`methods`, see `replica.serve_method`), so Serve's
    access log names the stage's method; each (stage, method) handle is made once.

    A multiplexed call names its model with `handle.options(multiplexed_model_id=...)`, so
    Serve routes it to a replica holding that model; one handle is made per model id. Serve
    needs that id as a string: an id still in flight (a stage's output) is awaited first, in
    a task of its own, as is any leaf that is such a task (Serve cannot take one)."""

    def __init__(self, handles: dict[str, DeploymentHandle], driver_name: str,
                 methods: dict[str, str] | None = None,
                 replicas: dict[str, int] | None = None) -> None:
        self.handles = handles
        self.methods = methods or {}
        self.replicas = replicas or {}  # deployment -> replicas at start, for chunk sizes
        self.by_method: dict[tuple[str, str, bool], DeploymentHandle] = {}
        self.by_model: dict[tuple[str, str, str], DeploymentHandle] = {}
        self.driver_name = driver_name
        self.metrics: PipelineMetrics | None = None  # the driver's, recording map widths

    def call(self, step: Step, leaves: list[Any]) -> Any:
        model_id = None if step.model_id is None else step.model_id(leaves)
        if self.is_future(model_id) or any(holds(leaf, asyncio.Future) for leaf in leaves):
            return asyncio.ensure_future(self._later(step, leaves))
        return self._dispatch(step, leaves, model_id)

    def _dispatch(self, step: Step, leaves: list[Any], model_id: Any) -> Any:
        flat, shape = flatten(leaves)
        node = step.node
        stage = node.stage or ""
        model = "" if model_id is None else self._model_id(step, model_id)
        if node.stream:
            return StreamCall(stage, node.id, shape, tuple(flat))
        if noting():
            return asyncio.ensure_future(self._reported(stage, node.id, shape, flat, model))
        handle = self._handle(stage, self.methods.get(node.id, "__call__"), model_id=model)
        return handle.remote(node.id, shape, *flat, **_along())

    async def _later(self, step: Step, leaves: list[Any]) -> Any:
        """A call whose model id is still in flight, or that reads this runner's own tasks:
        those awaited, then the handle called and its value awaited (it feeds such a task)."""
        ready = [await awaited(leaf, asyncio.Future) for leaf in leaves]
        model_id = None if step.model_id is None else step.model_id(ready)
        if self.is_future(model_id):
            model_id = await model_id
        result = self._dispatch(step, ready, model_id)
        return result if step.node.stream else await result

    def _model_id(self, step: Step, value: Any) -> str:
        try:
            return require_model_id(value)
        except ValueError as exc:
            raise StageError(step.node.stage or step.node.label, str(exc), site=step.node.site,
                             error_type="ValueError") from None

    def _handle(self, stage: str, method: str, stream: bool = False,
                model_id: str = "") -> DeploymentHandle:
        """The stage's handle for one method (and streaming or not), made once; for a model
        id, that handle with `multiplexed_model_id`, made once per id."""
        if model_id:
            key = (stage, method, model_id)
            handle = self.by_model.get(key)
            if handle is None:
                handle = self._handle(stage, method, stream).options(
                    multiplexed_model_id=model_id)
                self.by_model[key] = handle
            return handle
        handle = self.by_method.get((stage, method, stream))
        if handle is None:
            handle = self.handles[stage]
            if method != "__call__" or stream:
                handle = handle.options(method_name=method, **({"stream": True} if stream else {}))
            self.by_method[(stage, method, stream)] = handle
        return handle

    async def _reported(self, stage: str, node_id: str, shape: Any, flat: list[Any],
                        model_id: str = "") -> Any:
        handle = self._handle(stage, "reported", model_id=model_id)
        return settle(await handle.remote(node_id, shape, *flat, **_along()))

    def open(self, stream: StreamCall | asyncio.Future[StreamCall]) -> AsyncIterator[Any]:
        if isinstance(stream, asyncio.Future):  # its call waited for this runner's tasks
            return self._open_later(stream)
        handle = self._handle(stream.stage, self.methods.get(stream.node_id, "stream"),
                              stream=True)
        return handle.remote(stream.node_id, stream.shape, *stream.flat)

    async def _open_later(self, started: asyncio.Future[StreamCall]) -> AsyncIterator[Any]:
        async for chunk in self.open(await started):
            yield chunk

    def map(self, step: Step, items: Sequence[Any], rest: list[Any]) -> Any:
        """A map's elements in chunks (`chunk_size`), one handle call each to the replica's
        `chunk`, as one future of the whole list in order (`Chunks`: it passes unawaited into
        the calls that read it, as a response does; a failure names its element's index);
        a multiplexed map, a traced one, or one reading this runner's own tasks: a call per
        element."""
        node = step.node
        size = chunk_size(node.fanout, len(items), self.replicas.get(node.stage or "", 1))
        if self.metrics is not None:
            self.metrics.map_width(node.stage or "", node.id, len(items))
        if step.model_id is not None or noting() or node.stream or any(
                holds(leaf, asyncio.Future) for leaf in (list(items), *rest)):
            return [self.call(step, [item, *rest]) for item in items]
        handle = self._handle(node.stage or "", "chunk")
        calls = []
        for offset in range(0, len(items), size):
            flat, shape = flatten([list(items[offset:offset + size]), *rest])
            calls.append(handle.remote(node.id, shape, offset, *flat, **_along()))
        return Chunks(calls)

    def is_future(self, value: Any) -> bool:
        return isinstance(value, (DeploymentResponse, asyncio.Future, Chunks))

    async def resolve(self, value: Any) -> Any:
        return await value

    def on_error(self, error: BaseException, request_id: str | None) -> BaseException:
        return as_pipeline_error(error, self.driver_name, request_id)

    def discard(self, value: DeploymentResponse | Chunks | asyncio.Future[Any]) -> None:
        """A request that failed leaves its calls to finish on their replicas, unread (Serve
        logs nothing for a response never awaited). One whose deadline passed cancels them
        (`deadline`: the calls still running must stop), where that cannot block: a
        response whose router runs on this loop (the throughput-optimised mode servegraph's
        driver runs in); where Serve routes on a loop of its own, `DeploymentResponse.cancel()`
        would block the driver's loop until a replica is assigned."""
        if isinstance(value, asyncio.Future):
            if not value.done():
                value.cancel()
            elif not value.cancelled():
                value.exception()
        elif isinstance(value, Chunks):
            for response in value.responses:
                self.discard(response)
        elif past_deadline() and not router_in_separate_loop():
            value.cancel()


CHUNKS_PER_REPLICA = 4  # enough calls to spread over the replicas and overlap their hops
MAX_CHUNK_SIZE = 1000   # elements in one call: its arguments and results stay small messages


def chunk_size(fanout: MapPlan | None, width: int, replicas: int) -> int:
    """Elements per call for a map of `width` elements over a deployment of `replicas`: the
    map's own `chunk_size`, else about `CHUNKS_PER_REPLICA` calls per replica, at most
    `MAX_CHUNK_SIZE` elements each, never fewer than one."""
    if fanout is not None and fanout.chunk_size is not None:
        return fanout.chunk_size
    return max(1, min(MAX_CHUNK_SIZE, -(-width // (max(1, replicas) * CHUNKS_PER_REPLICA))))


def _along() -> dict[str, Any]:
    """What a call carries beside its arguments: the request's deadline, for a replica to
    bound its call by (`deadline`), and the trace context its span joins (`tracing.carrier`),
    each only when there is one (replicas of plans without them are called as before)."""
    deadline = DEADLINE.get()
    along: dict[str, Any] = tracing.carrier()
    if deadline is not None:
        along["deadline"] = deadline
    return along


def fused_metrics(fused: list[StagePlan]) -> Watch | None:
    """Each fused stage's metrics, recorded around its calls in this driver as a replica of
    its own records them (`metrics`): None with metrics off."""
    recorders = {stage.name: stage_metrics(stage.name) for stage in fused}
    if any(recorder is None for recorder in recorders.values()):
        return None
    return lambda node: recorders[node.stage or ""].call(node.id)  # type: ignore[union-attr]


class PipelineDriver:
    """The ingress deployment: walks the plan for each request, over a handle or HTTP."""

    def __init__(self, plan: CompiledPipeline, handles: dict[str, DeploymentHandle],
                 diagram_svg: bytes | None = None, route: str = "") -> None:
        self.program = Program(plan)
        remote = ServeRunner(handles, plan.driver.name, serve_methods(plan),
                             {stage.name: stage.resources.replicas.start
                              for stage in plan.served()})
        # end-to-end latency per pipeline (`route`: its `sg.App` route), map widths
        self.metrics = remote.metrics = pipeline_metrics(plan.name, route)
        self.traced = tracing.enabled()  # read once: a process's switch (see `tracing`)
        fused = plan.fused()  # stages the fuse pass put in this replica: built and called here
        self.runner: Runner = remote if not fused else FusedRunner(
            LocalRunner(self.program, build_instances(plan, fused), strict=False,
                        watch=fused_metrics(fused)), remote)
        # HTTP behind Serve's proxy, which makes the request ids and echoes them itself
        self.endpoint = Endpoint(plan, self.run,
                                 stream=self.stream if self.program.streams else None,
                                 diagram_svg=diagram_svg, echo_request_id=False,
                                 new_id=serve_request_id)

    def reconfigure(self, config: Any) -> None:
        """The driver's user_config, from the plan or a new `serve deploy` config: the weights
        of the plan's splits (`branches.Routing`), changed without restarting a replica."""
        self.program.routing.reconfigure(config)

    async def run(self, payload: Any, request_id: str | None = None,
                  deadline_s: float | None = None) -> Any:
        """One request; `deadline_s`: its caller's budget, capped by the graph's `timeout_s`."""
        if not self.traced:  # the usual case: no span, no generator around the request
            return await self.measured(payload, request_id, deadline_s, None)
        with tracing.request_span(self.program.plan.name, request_id) as observer:
            return await self.measured(payload, request_id, deadline_s, observer)

    async def measured(self, payload: Any, request_id: str | None, deadline_s: float | None,
                       observer: Observer | None) -> Any:
        """`execute`, timed and counted by the pipeline's metrics when they are on."""
        running = execute(self.program, payload, self.runner, request_id,
                          deadline_s=deadline_s, observer=observer)
        if self.metrics is None:
            return await running
        with self.metrics.request():
            return await running

    async def trace(self, payload: Any, request_id: str | None = None,
                    deadline_s: float | None = None) -> Trace:
        """Run one request with a trace (see `trace`: this driver then awaits every
        intermediate value); a servegraph error is kept in the trace, not raised."""
        trace = Trace(self.program.plan.name, executor="ray")
        return await record(trace, self.program, payload, self.runner, request_id,
                            deadline_s=deadline_s)

    async def stream(self, payload: Any, request_id: str | None = None) -> AsyncIterator[Any]:
        """The chunks of a streaming pipeline (call with `handle.options(stream=True)`)."""
        async for chunk in stream(self.program, payload, self.runner, request_id):
            yield chunk

    def plan(self) -> str:
        """The compiled plan as JSON (for `servegraph status --render`)."""
        return self.program.plan.model_dump_json()

    async def __call__(self, request: Request) -> Response:
        return await self.endpoint.http(request)

    # --- gRPC ingress (`web.grpc_ingress`): Serve's gRPC proxy calls these by the method's
    # name, with the request's bytes as the client sent them (`grpc_service`) ---
    @functools.cached_property
    def grpc(self) -> GrpcIngress:
        """The graph's message classes, built on the first gRPC call (HTTP never needs them)."""
        plan = self.program.plan
        return GrpcIngress(plan, new_id=serve_request_id, output_stage=plan.output_stages())

    async def Call(self, request: bytes, grpc_context: Any = None) -> Any:
        """gRPC `Call`: the output as the reply message."""
        return await self.grpc.call(request, grpc_context, self.run)

    async def Stream(self, request: bytes, grpc_context: Any = None) -> AsyncIterator[Any]:
        """gRPC `Stream`: a message per chunk of a streaming graph's output."""
        async for message in self.grpc.stream(request, grpc_context, self.stream):
            yield message
    # --- end of the gRPC ingress ---

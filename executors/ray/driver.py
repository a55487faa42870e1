"""The ingress driver on Ray Serve: walks the plan with the one scheduling core.

A call becomes `handle.remote(node_id, shape, *leaves)` on the stage's deployment (see
`replica`), returning a `DeploymentResponse` that is passed, unawaited, straight into the calls
that read it; Serve resolves it where it is needed, so the driver adds no hop of its own. The
stages the fuse pass put in the driver are built and called here, in-process (`fused`).
Deploying a plan and calling it from outside is `serving/`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.requests import Request
from starlette.responses import Response

from ...compiler import CompiledPipeline
from ...web.ingress import handle_http, plan_views
from ..batching import noting, settle
from ..core import Runner, execute, stream
from ..local.runner import LocalRunner, build_instances
from ..program import Program, Step
from ..trace import Trace, record
from .errors import as_pipeline_error
from .fused import FusedRunner
from .ray_private import serve_request_id
from .replica import StreamCall, flatten, serve_methods


class ServeRunner:
    """Calls the stages' deployments through their handles. A traced call (one whose caller
    notes batch splits, see `batching`) asks the replica's `reported` method instead, and is
    an asyncio task that settles its `Outcome`: the trace awaits every value anyway. A call
    asks for its node's method by name (`methods`, see `replica.serve_method`), so Serve's
    access log names the stage's method; each (stage, method) handle is made once."""

    def __init__(self, handles: dict[str, DeploymentHandle], driver_name: str,
                 methods: dict[str, str] | None = None) -> None:
        self.handles = handles
        self.methods = methods or {}
        self.by_method: dict[tuple[str, str, bool], DeploymentHandle] = {}
        self.driver_name = driver_name

    def call(self, step: Step, leaves: list[Any]) -> Any:
        flat, shape = flatten(leaves)
        node = step.node
        if node.stream:
            return StreamCall(node.stage, node.id, shape, tuple(flat))  # type: ignore[arg-type]
        if noting():
            return asyncio.ensure_future(self._reported(node.stage, node.id, shape, flat))
        handle = self._handle(node.stage, self.methods.get(node.id, "__call__"))  # type: ignore[arg-type]
        return handle.remote(node.id, shape, *flat)

    def _handle(self, stage: str, method: str, stream: bool = False) -> DeploymentHandle:
        """The stage's handle for one method (and streaming or not), made once."""
        key = (stage, method, stream)
        handle = self.by_method.get(key)
        if handle is None:
            handle = self.handles[stage]
            if method != "__call__" or stream:
                handle = handle.options(method_name=method, **({"stream": True} if stream else {}))
            self.by_method[key] = handle
        return handle

    async def _reported(self, stage: str, node_id: str, shape: Any, flat: list[Any]) -> Any:
        handle = self._handle(stage, "reported")
        return settle(await handle.remote(node_id, shape, *flat))

    def open(self, stream: StreamCall) -> AsyncIterator[Any]:
        handle = self._handle(stream.stage, self.methods.get(stream.node_id, "stream"),
                              stream=True)
        return handle.remote(stream.node_id, stream.shape, *stream.flat)

    def is_future(self, value: Any) -> bool:
        return isinstance(value, (DeploymentResponse, asyncio.Future))

    async def resolve(self, value: Any) -> Any:
        return await value

    def on_error(self, error: BaseException, request_id: str | None) -> BaseException:
        return as_pipeline_error(error, self.driver_name, request_id)

    def discard(self, value: DeploymentResponse) -> None:
        """Leave it: Serve logs nothing for a response never awaited, and
        `DeploymentResponse.cancel()` blocks the driver's loop until a replica is assigned,
        then raises the upstream error. Sibling calls finish on their replicas, unread."""
        return None


class PipelineDriver:
    """The ingress deployment: walks the plan for each request, over a handle or HTTP."""

    def __init__(self, plan: CompiledPipeline, handles: dict[str, DeploymentHandle],
                 diagram_svg: bytes | None = None) -> None:
        self.program = Program(plan)
        remote = ServeRunner(handles, plan.driver.name, serve_methods(plan))
        fused = plan.fused()  # stages the fuse pass put in this replica: built and called here
        self.runner: Runner = remote if not fused else FusedRunner(
            LocalRunner(self.program, build_instances(plan, fused), strict=False), remote)
        self.views = plan_views(plan, diagram_svg)
        self.needs_body = plan.reads_input()  # an empty HTTP body is a 400, not the payload

    def reconfigure(self, config: Any) -> None:
        """The driver's user_config, from the plan or a new `serve deploy` config: the weights
        of the plan's splits (`branches.Routing`), changed without restarting a replica."""
        self.program.routing.reconfigure(config)

    async def run(self, payload: Any, request_id: str | None = None) -> Any:
        return await execute(self.program, payload, self.runner, request_id)

    async def trace(self, payload: Any, request_id: str | None = None) -> Trace:
        """Run one request with a trace (see `trace`: this driver then awaits every
        intermediate value); a servegraph error is kept in the trace, not raised."""
        trace = Trace(self.program.plan.name, executor="ray")
        return await record(trace, self.program, payload, self.runner, request_id)

    async def stream(self, payload: Any, request_id: str | None = None) -> AsyncIterator[Any]:
        """The chunks of a streaming pipeline (call with `handle.options(stream=True)`)."""
        async for chunk in stream(self.program, payload, self.runner, request_id):
            yield chunk

    def plan(self) -> str:
        """The compiled plan as JSON (for `servegraph status --render`)."""
        return self.program.plan.model_dump_json()

    async def __call__(self, request: Request) -> Response:
        return await handle_http(request, self.run, echo_request_id=False, views=self.views,
                                 stream=self.stream if self.program.streams else None,
                                 needs_body=self.needs_body, new_id=serve_request_id)

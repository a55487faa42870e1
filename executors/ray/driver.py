"""The ingress driver on Ray Serve: walks the plan with the one scheduling core.

A call becomes `handle.remote(node_id, shape, *leaves)` on the stage's deployment (see
`replica`), returning a `DeploymentResponse` that is passed, unawaited, straight into the calls
that read it; Serve resolves it where it is needed, so the driver adds no hop of its own. The
stages the fuse pass put in the driver are built and called here, in-process (`fused`).
Deploying a plan and calling it from outside is `serving/`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.requests import Request
from starlette.responses import Response

from ...compiler import CompiledPipeline
from ...web.ingress import handle_http, plan_views
from ..core import Program, Runner, Step, execute, stream
from ..local.runner import LocalRunner, build_instances
from ..trace import Trace, record
from .errors import as_pipeline_error
from .fused import FusedRunner
from .ray_private import serve_request_id
from .replica import StreamCall, flatten


class ServeRunner:
    """Calls the stages' deployments through their handles."""

    def __init__(self, handles: dict[str, DeploymentHandle], driver_name: str) -> None:
        self.handles = handles
        self.stream_handles: dict[str, DeploymentHandle] = {}
        self.driver_name = driver_name

    def call(self, step: Step, leaves: list[Any]) -> Any:
        flat, shape = flatten(leaves)
        node = step.node
        if node.stream:
            return StreamCall(node.stage, node.id, shape, tuple(flat))  # type: ignore[arg-type]
        return self.handles[node.stage].remote(node.id, shape, *flat)  # type: ignore[index]

    def open(self, stream: StreamCall) -> AsyncIterator[Any]:
        handle = self.stream_handles.get(stream.stage)
        if handle is None:
            handle = self.handles[stream.stage].options(method_name="stream", stream=True)
            self.stream_handles[stream.stage] = handle
        return handle.remote(stream.node_id, stream.shape, *stream.flat)

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


class PipelineDriver:
    """The ingress deployment: walks the plan for each request, over a handle or HTTP."""

    def __init__(self, plan: CompiledPipeline, handles: dict[str, DeploymentHandle],
                 diagram_svg: bytes | None = None) -> None:
        self.program = Program(plan)
        remote = ServeRunner(handles, plan.driver.name)
        fused = plan.fused()  # stages the fuse pass put in this replica: built and called here
        self.runner: Runner = remote if not fused else FusedRunner(
            LocalRunner(self.program, build_instances(plan, fused), strict=False), remote)
        self.views = plan_views(plan, diagram_svg)

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
                                 new_id=serve_request_id)

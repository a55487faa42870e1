"""The Serve driver's runner when the plan fused stages into it (see `compiler.fuse`).

One runner for the one scheduling core: fused steps go to the local runner's `_Call` (the
stage object built in the driver replica, called directly: no handle, no serialisation, the
same sync/async/batch/guard handling as `run_local`), every other step to its deployment's
handle. The two kinds of future meet at the edges between them: a fused call reading a
`DeploymentResponse` awaits it in the driver first, and a handle call reading an in-process
asyncio future awaits that first too (a Serve handle cannot take one). Both waits run in a
task of their own, so the core still dispatches independent branches at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ray.serve.handle import DeploymentResponse

from ..local.runner import LocalRunner
from ..program import Runner, Step, awaited, holds
from .replica import Chunks


class FusedRunner:
    def __init__(self, local: LocalRunner, remote: Runner) -> None:
        self.local = local
        self.remote = remote

    def call(self, step: Step, leaves: list[Any]) -> Any:
        if step.node.id in self.local.calls:
            if any(holds(leaf, (DeploymentResponse, Chunks)) for leaf in leaves):
                return asyncio.get_running_loop().create_task(self._fused_later(step, leaves))
            return self.local.call(step, leaves)
        if any(holds(leaf, asyncio.Future) for leaf in leaves):
            return asyncio.get_running_loop().create_task(self._remote_later(step, leaves))
        return self.remote.call(step, leaves)

    async def _fused_later(self, step: Step, leaves: list[Any]) -> Any:
        """A fused call reading deployments' responses: awaited here, then called in-process."""
        ready = [await awaited(leaf, (DeploymentResponse, Chunks, asyncio.Future))
                 for leaf in leaves]
        return await self.local.run_ready(step, ready)

    async def _remote_later(self, step: Step, leaves: list[Any]) -> Any:
        """A deployment's call reading fused results: those awaited, then the handle called
        (responses among its leaves still pass on unawaited); a stream stays unstarted."""
        ready = [await awaited(leaf, (asyncio.Future,)) for leaf in leaves]
        result = self.remote.call(step, ready)
        return result if step.node.stream else await result

    def map(self, step: Step, items: Sequence[Any], rest: list[Any]) -> Any:
        """A fused map calls in-process, another its deployment (in chunks); either one whose
        elements or arguments hold the other side's futures: a call per element, as `call`
        bridges them."""
        fused = step.node.id in self.local.calls
        other = (DeploymentResponse, Chunks) if fused else asyncio.Future
        if any(holds(leaf, other) for leaf in (list(items), *rest)):
            return [self.call(step, [item, *rest]) for item in items]
        return (self.local if fused else self.remote).map(step, items, rest)

    def is_future(self, value: Any) -> bool:
        return isinstance(value, (asyncio.Future, DeploymentResponse, Chunks))

    async def resolve(self, value: Any) -> Any:
        return await value

    def on_error(self, error: BaseException, request_id: str | None) -> BaseException:
        return self.remote.on_error(error, request_id)

    def discard(self, value: Any) -> None:
        if isinstance(value, asyncio.Future):
            self.local.discard(value)
        else:
            self.remote.discard(value)

    def open(self, stream: Any) -> AsyncIterator[Any]:
        if isinstance(stream, asyncio.Future):  # a stream whose call waited on fused inputs
            return self._open_later(stream)
        return self.remote.open(stream)

    async def _open_later(self, started: asyncio.Future[Any]) -> AsyncIterator[Any]:
        async for chunk in self.remote.open(await started):
            yield chunk

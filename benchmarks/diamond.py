"""The benchmark diamond, once for every contender: inc -> (double, triple) -> add.

The same four stage objects serve servegraph (local executor and compiled Serve app), the
hand-written Serve composition and plain asyncio, so only the machinery around them differs.
They live in a module of their own, not in the script's `__main__`, because Serve replicas
unpickle stages by import path: Ray puts the driver's script directory on every worker's
`sys.path`, so `import diamond` works in the replicas when the script is run from anywhere.
All four stages are async, so plain asyncio can call the very same functions.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

import servegraph as sg


@sg.deployment
class Inc:
    """A class stage, as a model holding weights would be."""

    async def __call__(self, x: int) -> int:
        return x + 1


@sg.deployment
async def double(x: int) -> int:
    return 2 * x


@sg.deployment
async def triple(x: int) -> int:
    return 3 * x


@sg.deployment
async def add(a: int, b: int) -> int:
    return a + b


def graph() -> sg.Graph:
    with sg.InputNode() as inp:
        a = Inc.bind().__call__.bind(inp.x)
        out = add.bind(double.bind(a), triple.bind(a))
    return sg.Graph(out, name="diamond")


async def run_asyncio(inc: Inc, request: dict[str, Any]) -> int:
    """The floor: the four stages called directly, the two branches under one gather."""
    a = await inc(request["x"])
    b, c = await asyncio.gather(double(a), triple(a))
    return await add(b, c)


class HandIngress:
    """What a Serve user writes by hand: responses passed unawaited into downstream calls,
    only the last one awaited. `run` is the handle entry point, `__call__` the HTTP one."""

    def __init__(self, inc: DeploymentHandle, double_: DeploymentHandle,
                 triple_: DeploymentHandle, add_: DeploymentHandle) -> None:
        self._inc = inc
        self._double = double_
        self._triple = triple_
        self._add = add_

    async def run(self, request: dict[str, Any]) -> int:
        a = self._inc.remote(request["x"])
        return await self._add.remote(self._double.remote(a), self._triple.remote(a))

    async def __call__(self, request: Request) -> JSONResponse:
        return JSONResponse(await self.run(await request.json()))


def hand_app(ingress_options: dict[str, Any] | None = None) -> Any:
    """The hand-written Serve application; stages keep Serve's defaults, as in the compiled
    plan. `ingress_options` tunes only the ingress (e.g. `max_ongoing_requests`)."""
    stages = [serve.deployment(target, name=name).bind()
              for target, name in ((Inc, "inc"), (double, "double"),
                                   (triple, "triple"), (add, "add"))]
    ingress = serve.deployment(HandIngress, name="ingress").options(**(ingress_options or {}))
    return ingress.bind(*stages)


class HandFused:
    """The same work hand-fused into one deployment: the four stages called in-process, the
    branches under one gather (what fusion should match)."""

    def __init__(self) -> None:
        self._inc = Inc()

    async def run(self, request: dict[str, Any]) -> int:
        return await run_asyncio(self._inc, request)


def hand_fused_app() -> Any:
    return serve.deployment(HandFused, name="hand-fused").options(
        max_ongoing_requests=1000).bind()

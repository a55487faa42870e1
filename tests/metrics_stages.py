"""Stages for the metrics and doctor tests (importable, so Serve replicas load them): every
one `fuse=False`, so each runs in a replica of its own and records there."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

import servegraph as sg


@sg.deployment(fuse=False)
def square(x: int) -> int:
    if x < 0:
        raise ValueError(f"cannot square {x}: negative")
    return x * x


@sg.deployment(fuse=False, timeout_s=0.5)
async def nap(seconds: float) -> float:
    """Sleeps as long as asked: past its `timeout_s` a call times out."""
    await asyncio.sleep(seconds)
    return seconds


@sg.deployment(fuse=False)
class Scorer:
    @sg.batch(max_batch_size=4, batch_wait_timeout_s=1.0)
    async def score(self, xs: list[int]) -> list[int]:
        return [2 * x for x in xs]


def metered() -> sg.Graph:
    """`square` on x, `nap` on nap, and a map of four-element chunks over `Scorer.score`."""
    with sg.InputNode() as inp:
        out = {"square": square.bind(inp.x), "nap": nap.bind(inp.nap),
               "scores": sg.map(Scorer.bind().score, inp.items, chunk_size=4)}
    return sg.Graph(out, name="metered")


@sg.deployment(fuse=False, max_ongoing_requests=2)
async def crawl(x: int, gate: str = "") -> int:
    """A slow stage that admits two calls at a time: concurrent load saturates it. With a
    `gate`, a call waits until the `Gate` actor of that name opens, so the stage stays
    saturated until a test has seen it so."""
    if gate:
        await ray.get_actor(gate, namespace=GATES).wait.remote()
    else:
        await asyncio.sleep(1.0)
    return x


@sg.deployment(fuse=False)
class SlowStart:
    def __init__(self) -> None:
        time.sleep(1.5)  # a model load

    def __call__(self, x: int) -> int:
        return x + 1


@sg.deployment(fuse=False, ray_actor_options={"resources": {"servegraph_absent": 1}},
               graceful_shutdown_timeout_s=1)
def unplaceable(x: int) -> int:
    return x


def crawling(gated: bool = False) -> sg.Graph:
    """`crawl` on x; `gated`, on x and the name of its `Gate` in `gate`."""
    with sg.InputNode() as inp:
        out = crawl.bind(inp.x, inp.gate) if gated else crawl.bind(inp.x)
    return sg.Graph(out, name="crawling")


def slow_starting() -> sg.Graph:
    with sg.InputNode() as inp:
        out = SlowStart.bind().__call__.bind(inp.x)
    return sg.Graph(out, name="slow_starting")


def unplaced() -> sg.Graph:
    with sg.InputNode() as inp:
        out = unplaceable.bind(square.bind(inp.x))
    return sg.Graph(out, name="unplaced")


@sg.deployment(fuse=False)
async def linger(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


def lingering(**options: Any) -> sg.Graph:
    """`linger` alone; `options` override its deployment options."""
    with sg.InputNode() as inp:
        out = linger.options(**options).bind(inp.seconds)
    return sg.Graph(out, name="lingering")


GATES = "servegraph-gates"  # the Ray namespace of the `Gate` actors


@ray.remote(num_cpus=0)
class Gate:
    """A named actor that `gated` calls wait on until the test opens it: a call held in
    flight exactly as long as the test needs, not a guessed number of seconds."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()

    async def wait(self) -> None:
        await self.opened.wait()

    async def open(self) -> None:
        self.opened.set()


@sg.deployment(fuse=False)
async def held(gate: str) -> str:
    """Runs until the `Gate` actor named `gate` opens."""
    await ray.get_actor(gate, namespace=GATES).wait.remote()
    return gate


def gated() -> sg.Graph:
    with sg.InputNode() as inp:
        out = held.bind(inp.gate)
    return sg.Graph(out, name="gated")


@sg.deployment
def halve(x: int) -> float:
    """A light stage: fused into the driver, which records its metrics."""
    return x / 2


def fused() -> sg.Graph:
    with sg.InputNode() as inp:
        out = halve.bind(square.bind(inp.x))
    return sg.Graph(out, name="fused_metered")

"""Stages for the testing-toolkit and timeout tests (importable, so Serve replicas load them):
a GPU stage and its CPU fake, a flaky stage, stages that hang (async, sync, mid-stream)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import servegraph as sg

HANG_S = 30.0      # far past every timeout_s below: a hang is never mistaken for a slow call
TIMEOUT_S = 1.0
RELEASE = threading.Event()  # lets this process's stuck sync calls go at the end of a test


def assigned_gpus() -> float:
    """GPUs Ray gave the process running this (0 outside a Ray worker)."""
    try:
        import ray

        if not ray.is_initialized():
            return 0.0
        return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    except Exception:
        return 0.0


@sg.deployment(ray_actor_options={"num_gpus": 1, "num_cpus": 0.5})
class GpuEmbedder:
    """Stands for a model that needs a GPU: it cannot even be built without one."""

    def __init__(self, model: str) -> None:
        raise RuntimeError(f"loading {model} needs a CUDA GPU")

    def embed(self, text: str) -> list[float]:
        raise NotImplementedError


class CpuEmbedder:
    """The fake: built with the stage's own constructor arguments; says where it runs."""

    def __init__(self, model: str) -> None:
        self.model = model

    def embed(self, text: str) -> list[float]:
        return [float(len(text)), assigned_gpus()]


class PerItemProbe:
    """A fake of `stages.BatchProbe` whose `size` is a plain method: one item per call."""

    def size(self, item: int) -> int:
        return item * 10


class PairedProbe:
    """A fake of `stages.BatchProbe` that batches itself: lists, at most two items."""

    @sg.batch(max_batch_size=2, batch_wait_timeout_s=2.0)
    async def size(self, items: list[int]) -> list[int]:
        return [len(items)] * len(items)


def tenfold(item: int) -> int:
    """A stand-in for the one method `BatchProbe.size`."""
    return item * 10


@sg.deployment
def nearest(vector: list[float], documents: list[str]) -> dict[str, Any]:
    length = vector[0]
    best = min(documents, key=lambda doc: abs(len(doc) - length)) if documents else None
    return {"best": best, "gpus": vector[1]}


def search() -> sg.Graph:
    with sg.InputNode() as inp:
        vector = GpuEmbedder.bind("big-model").embed.bind(inp.query)
        out = nearest.bind(vector, inp.documents)
    return sg.Graph(out, name="gpusearch")


@sg.deployment(max_retries=2)
class Flaky:
    """Fails the first `fail` calls for each key, then answers with the attempt that won."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def fetch(self, key: str, fail: int) -> dict[str, Any]:
        self.calls[key] = self.calls.get(key, 0) + 1
        if self.calls[key] <= fail:
            raise ConnectionError(f"{key}: attempt {self.calls[key]} failed")
        return {"key": key, "attempt": self.calls[key]}


def flaky(retries: int | None = None) -> sg.Graph:
    stage = Flaky if retries is None else Flaky.options(max_retries=retries)
    with sg.InputNode() as inp:
        out = stage.bind().fetch.bind(inp.key, inp.fail)
    return sg.Graph(out, name="flaky")


@sg.deployment(timeout_s=TIMEOUT_S)
async def stalls(x: int) -> int:
    """Async: hangs when asked to (cancelled at its timeout)."""
    if x < 0:
        await asyncio.sleep(HANG_S)
    return x + 1


@sg.deployment(timeout_s=TIMEOUT_S)
def blocks(x: int) -> int:
    """Sync: blocks when asked to (cannot be interrupted: left to finish in its thread)."""
    if x < 0:
        RELEASE.wait(HANG_S)
    return x * 10


@sg.deployment
def combine(a: int, b: int) -> list[int]:
    return [a, b]


def stalling() -> sg.Graph:
    """Fan-out to an async and a sync stage that may hang, fan-in."""
    with sg.InputNode() as inp:
        out = combine.bind(stalls.bind(inp.x), blocks.bind(inp.y))
    return sg.Graph(out, name="stalling")


@sg.deployment(timeout_s=TIMEOUT_S)
async def drip(n: int) -> AsyncIterator[int]:
    """Streams 0..n-1, then stalls before the next chunk when n < 3."""
    for chunk in range(n):
        yield chunk
    if n < 3:
        await asyncio.sleep(HANG_S)
        yield -1


def dripping() -> sg.Graph:
    with sg.InputNode() as inp:
        out = drip.bind(inp.n)
    return sg.Graph(out, name="drip")

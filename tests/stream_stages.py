"""Streaming stages for the streaming tests: an async generator stage, a stage reading a stream
chunk by chunk and streaming on, a stage reading a stream to one value, and a generator that
waits at a gate between its first and last chunk. Importable, so Ray's workers load them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import servegraph as sg

GATE_TIMEOUT_S = 60.0


@sg.deployment
class Words:
    async def words(self, text: str) -> AsyncIterator[str]:
        for word in text.split():
            await asyncio.sleep(0)
            yield word + " "


@sg.deployment
class Shout:
    async def shout(self, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        async for chunk in chunks:
            yield chunk.upper()


@sg.deployment
async def count(chunks: AsyncIterator[str]) -> int:
    seen = 0
    async for _ in chunks:
        seen += 1
    return seen


@sg.deployment
async def gated(gate: str) -> AsyncIterator[str]:
    """'first', then 'last' once the file `gate` exists: the reader must see 'first' before
    the generator can make 'last'."""
    yield "first"
    waited = 0.0
    while not os.path.exists(gate):
        if waited > GATE_TIMEOUT_S:
            raise TimeoutError(f"nobody opened the gate {gate}")
        await asyncio.sleep(0.01)
        waited += 0.01
    yield "last"


@sg.deployment
async def numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i
    if n > 2:
        raise ValueError(f"{n} is too many")


@sg.deployment
async def liar(n: int) -> AsyncIterator[int]:
    """Says it yields ints; yields a string."""
    yield n
    yield "three"  # type: ignore[misc]


def shouted() -> sg.Graph:
    with sg.InputNode() as inp:
        loud = Shout.bind().shout.bind(Words.bind().words.bind(inp.text))
    return sg.Graph(loud, name="shouted")


def counted() -> sg.Graph:
    with sg.InputNode() as inp:
        total = count.bind(Words.bind().words.bind(inp.text))
    return sg.Graph(total, name="counted")


def gate_graph() -> sg.Graph:
    with sg.InputNode() as inp:
        out = gated.bind(inp.gate)
    return sg.Graph(out, name="gate")


def numbers_graph() -> sg.Graph:
    with sg.InputNode() as inp:
        out = numbers.bind(inp.n)
    return sg.Graph(out, name="numbers")

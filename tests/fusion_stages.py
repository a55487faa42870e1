"""Stages for the fusion tests (importable, so Serve replicas load them): light ones the fuse
pass puts in the driver, and heavy ones it must leave as deployments of their own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import servegraph as sg


@sg.deployment
def light_add(a: int, b: int) -> int:
    return a + b


@sg.deployment
async def light_mix(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return 3 * a - b


@sg.deployment(num_replicas=2)
def heavy_add(a: int, b: int) -> int:
    return a + 2 * b


@sg.deployment(fuse=False)
async def solid_mix(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a * 5 - b


# the pure Python meaning of each stage, for the reference results of random graphs
MEANING = {"light_add": lambda a, b: a + b, "light_mix": lambda a, b: 3 * a - b,
           "heavy_add": lambda a, b: a + 2 * b, "solid_mix": lambda a, b: a * 5 - b}
KINDS = {"light_add": light_add, "light_mix": light_mix, "heavy_add": heavy_add,
         "solid_mix": solid_mix}


@sg.deployment(ray_actor_options={"num_gpus": 0.25})
class Embed:
    """A GPU stage by its declaration (no GPU is touched: scheduling needs none)."""

    def embed(self, word: str) -> list[float]:
        return [float(len(word)), float(ord(word[0]))] if word else [0.0, 0.0]


@sg.deployment
def tokenize(text: str) -> list[str]:
    return text.split()


@sg.deployment
def lengths(words: list[str]) -> list[int]:
    return [len(word) for word in words]


@sg.deployment
async def shout(word: str) -> str:
    return word.upper()


@sg.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 2})
def vote(vectors: list[list[float]], sizes: list[int], loud: list[str]) -> dict[str, object]:
    return {"best": max(range(len(vectors)), key=lambda i: sum(vectors[i])) if vectors else None,
            "sizes": sizes, "loud": loud}


@sg.deployment
def format_answer(result: dict[str, object], first: list[float]) -> str:
    return f"{result['best']}|{result['sizes']}|{result['loud']}|{first}"


@sg.deployment
async def spell(text: str) -> AsyncIterator[str]:
    for char in text:
        yield char


@sg.deployment
async def collect(chunks: AsyncIterator[str]) -> str:
    return "".join([chunk async for chunk in chunks])


def mixed() -> sg.Graph:
    """GPU and CPU stages interleaved: light stages before and after a GPU stage, a map over a
    fused stage feeding an autoscaled one, a map over the GPU stage feeding a fused one."""
    with sg.InputNode() as inp:
        words = tokenize.bind(inp.text)
        vectors = sg.map(Embed.bind().embed, words)
        loud = sg.map(shout, words)
        result = vote.bind(vectors, lengths.bind(words), loud)
        first = Embed.bind().embed.bind(inp.first)
        out = format_answer.bind(result, first)
    return sg.Graph({"answer": out, "words": words}, name="mixed")


def spelled() -> sg.Graph:
    """A stream between a fused stage's output and a light stage that reads it."""
    with sg.InputNode() as inp:
        text = tokenize.bind(inp.text)
        joined = light_join.bind(text)
        out = collect.bind(spell.bind(joined))
    return sg.Graph(out, name="spelled")


@sg.deployment
def light_join(words: list[str]) -> str:
    return "-".join(words)

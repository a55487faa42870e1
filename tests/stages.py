"""Small real stages shared by the executor tests (importable, so Serve replicas load them)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

import servegraph as sg


@sg.deployment
class Inc:
    def __call__(self, x: int) -> int:
        return x + 1


@sg.deployment
async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@sg.deployment
def triple(x: int) -> int:
    return 3 * x


@sg.deployment
def add(a: int, b: int) -> int:
    return a + b


def diamond() -> sg.Graph:
    """inc -> (double, triple) -> add: fan-out, two concurrent branches, fan-in."""
    with sg.InputNode() as inp:
        a = Inc.bind().__call__.bind(inp.x)
        out = add.bind(double.bind(a), triple.bind(a))
    return sg.Graph(out, name="diamond")


@sg.deployment(max_ongoing_requests=64)
class Scorer:
    """Several call nodes on one actor group; a batched method; a failing input."""

    def __init__(self, weight: float) -> None:
        self.weight = weight

    @sg.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def score(self, words: list[str]) -> list[float]:
        if "boom" in words:
            raise ValueError("cannot score 'boom'")
        return [self.weight * len(word) for word in words]

    def scale(self, value: float, factor: int = 1) -> float:
        if factor < 0:
            raise ValueError(f"factor must be >= 0, got {factor}")
        return value * factor


@sg.deployment
def summarize(query: float, scores: list[float], meta: dict[str, Any]) -> dict[str, Any]:
    best = max(range(len(scores)), key=scores.__getitem__) if scores else None
    return {"query": query, "best": best, "scores": scores, **meta}


class Request(BaseModel):
    query: str
    words: list[str]
    factor: int = 1


def scoring() -> sg.Graph:
    """A typed input, a map over the request's list, a shared actor group, nested arguments."""
    with sg.InputNode(Request) as inp:
        scorer = Scorer.bind(0.5)
        query = scorer.score.bind(inp.query)
        scores = sg.map(scorer.score, inp.words)
        scaled = scorer.scale.bind(query, factor=inp.factor)
        report = summarize.bind(scaled, scores, {"words": inp.words, "tag": "v1"})
    return sg.Graph({"report": report, "pair": [query, scaled]}, name="scoring")


@sg.deployment
class BatchProbe:
    """Answers each call with the size of the batch it rode in: shows batching happened."""

    @sg.batch(max_batch_size=4, batch_wait_timeout_s=2.0)
    async def size(self, items: list[int]) -> list[int]:
        return [len(items)] * len(items)


def batch_probe() -> sg.Graph:
    """One call and a map on the same batched method: all of them share one batch queue."""
    with sg.InputNode() as inp:
        probe = BatchProbe.bind()
        one = probe.size.bind(inp.first)
        sizes = sg.map(probe.size, inp.items)
    return sg.Graph({"one": one, "sizes": sizes}, name="probe")


# the scoring pipeline's request and answer, shared by the tests of every executor
PAYLOAD = {"query": "hello", "words": ["a", "abcd", "ab"], "factor": 3}
EXPECTED = {
    "report": {"query": 7.5, "best": 1, "scores": [0.5, 2.0, 1.0],
               "words": ["a", "abcd", "ab"], "tag": "v1"},
    "pair": [2.5, 7.5],
}

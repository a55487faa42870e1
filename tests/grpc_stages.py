"""Graphs for the gRPC tests: a typed unary graph whose stage can be told to fail or to run past
its timeout, and a streaming graph that fails after its fifth chunk when asked for more.
Importable, so Ray's workers and the application builder load them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pydantic import BaseModel, Field

import servegraph as sg

STAGE_TIMEOUT_S = 0.5


class Question(BaseModel):
    text: str
    times: int = Field(default=1, ge=1)
    delay_s: float = 0.0


class Answer(BaseModel):
    words: list[str]
    length: int


class Count(BaseModel):
    n: int


@sg.deployment(timeout_s=STAGE_TIMEOUT_S)
class Splitter:
    async def split(self, question: Question) -> Answer:
        if question.text == "boom":
            raise ValueError("boom was asked for")
        await asyncio.sleep(question.delay_s)  # past timeout_s: the stage times out
        words = question.text.split() * question.times
        return Answer(words=words, length=len(words))


@sg.deployment
async def count_up(n: int) -> AsyncIterator[int]:
    for index in range(min(n, 5)):
        yield index
    if n > 5:
        raise ValueError(f"{n} is more than 5")


def split_graph() -> sg.Graph:
    with sg.InputNode(Question) as inp:
        answer = Splitter.bind().split.bind(inp)
    return sg.Graph(answer, name="grpc_split")


def ticks_graph() -> sg.Graph:
    with sg.InputNode(Count) as inp:
        ticks = count_up.bind(inp.n)
    return sg.Graph(ticks, name="grpc_ticks")


SPLIT = split_graph()
TICKS = ticks_graph()

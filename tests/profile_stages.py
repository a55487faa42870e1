"""A small graph for `servegraph profile` and `sg.profile`: a map with an extra argument, and a
batched method fed by it (importable by the CLI as `tests.profile_stages:graph`)."""

from __future__ import annotations

import servegraph as sg


@sg.deployment
def weigh(word: str, weight: float) -> float:
    return weight * len(word)


@sg.deployment
class Rounder:
    @sg.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def round(self, values: list[float]) -> list[int]:
        return [round(value) for value in values]


def graph() -> sg.Graph:
    with sg.InputNode() as inp:
        weights = sg.map(weigh, inp.words, inp.weight)
        out = sg.map(Rounder.bind().round, weights)
    return sg.Graph(out, name="weights")


PAYLOADS = [{"words": ["a", "bb"], "weight": 1.5}, {"words": ["ccc"], "weight": 2.0}]

"""Graphs for the command-line tests: one that compiles, one that does not, one GPU-sized."""

from __future__ import annotations

import servegraph as sg
from tests.stages import diamond


@sg.deployment
def shout(text: str) -> str:
    return text.upper()


@sg.deployment
def count(n: int) -> int:
    return n + 1


def broken() -> sg.Graph:
    with sg.InputNode() as inp:
        wrong = count.bind(shout.bind(inp.text))
    return sg.Graph(wrong, name="broken")


good = diamond()
not_a_graph = 42


@sg.deployment(num_replicas=2, gpu_memory="16GiB")
class WordLengths:
    """A GPU stage sized by memory: 0.2 of an 80 GiB GPU; two replicas overfill a 24 GiB one."""

    def __call__(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]


@sg.deployment
def total(lengths: list[int]) -> int:
    return sum(lengths)


def _lengths() -> sg.Graph:
    with sg.InputNode() as inp:
        out = total.bind(WordLengths.bind().__call__.bind(inp.text))
    return sg.Graph(out, name="lengths")


lengths = _lengths()


@sg.deployment(fuse=False)
class Shouter:
    """A stage of its own (not fused into the driver): each request makes one call to it."""

    def shout(self, text: str) -> str:
        return text.upper()

    def check_health(self, text: str) -> str:  # a method by the name of Serve's health hook
        return text


@sg.deployment
def length(text: str) -> int:
    return len(text)


def _loud() -> sg.Graph:
    with sg.InputNode() as inp:
        shouter = Shouter.bind()
        out = length.bind(shouter.check_health.bind(shouter.shout.bind(inp.text)))
    return sg.Graph(out, name="loud")


loud = _loud()

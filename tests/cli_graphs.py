"""Graphs for the command-line tests: one that compiles, one that does not."""

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

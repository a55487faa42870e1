"""Stages and graphs for the fan-out tests (importable, so Serve replicas load them)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import servegraph as sg


@sg.deployment(fuse=False)
def square(x: int) -> int:
    """Light, in a deployment of its own: on Serve a map over it goes out in chunks."""
    if x == 1234:
        raise ValueError("1234 is refused")
    return x * x


@sg.deployment(fuse=False)
async def slow_square(x: int) -> int:
    await asyncio.sleep(0)
    return x * x


@sg.deployment
class Counted:
    """Notes each call in `calls_file`: a test reads whether any stage was called."""

    def __init__(self, calls_file: str) -> None:
        self.calls_file = calls_file

    def __call__(self, x: int) -> int:
        with open(self.calls_file, "a") as calls:
            calls.write(f"{x}\n")
        return x


@sg.deployment
def not_json(x: int) -> float:
    return float("nan") if x < 0 else float(x)


def squares(chunk_size: int | None = None) -> sg.Graph:
    with sg.InputNode() as inp:
        out = sg.map(square, inp.xs, chunk_size=chunk_size)
    return sg.Graph(out, name="squares")


def async_squares() -> sg.Graph:
    with sg.InputNode() as inp:
        out = sg.map(slow_square, inp.xs)
    return sg.Graph(out, name="async_squares")


def bounded(calls_file: str) -> sg.Graph:
    """A stage called before the map, then a map of at most 5 elements."""
    with sg.InputNode() as inp:
        first = Counted.bind(calls_file).__call__.bind(inp.n)
        out = sg.map(square, inp.xs, max_width=5)
    return sg.Graph({"first": first, "squares": out}, name="bounded")


def unencodable() -> sg.Graph:
    with sg.InputNode() as inp:
        out = not_json.bind(inp.x)
    return sg.Graph(out, name="unencodable")


def calls(calls_file: str) -> list[str]:
    path = Path(calls_file)
    return path.read_text().split() if path.exists() else []


@sg.deployment(fuse=False)
class Sleeper:
    """Sleeps `x` seconds; notes in `marks_file` when it is cancelled."""

    def __init__(self, marks_file: str) -> None:
        self.marks_file = marks_file

    async def __call__(self, x: float) -> float:
        try:
            await asyncio.sleep(x)
        except asyncio.CancelledError:
            with open(self.marks_file, "a") as marks:
                marks.write("cancelled\n")
            raise
        return x


@sg.deployment(timeout_s=30)
async def patient(x: float) -> float:
    """A stage whose own timeout is far longer than the request's deadline."""
    await asyncio.sleep(x)
    return x


def deadlined(marks_file: str, timeout_s: float = 1.0) -> sg.Graph:
    with sg.InputNode() as inp:
        slept = Sleeper.bind(marks_file).__call__.bind(inp.sleep)
        waited = patient.bind(inp.wait)
    return sg.Graph({"slept": slept, "waited": waited}, name="deadlined", timeout_s=timeout_s)


@sg.deployment(fuse=False)
def total(xs: list[int]) -> int:
    return sum(xs)


def summed() -> sg.Graph:
    """A chunked map read by another deployment: its chunks pass on unawaited."""
    with sg.InputNode() as inp:
        out = total.bind(sg.map(square, inp.xs))
    return sg.Graph(out, name="summed")

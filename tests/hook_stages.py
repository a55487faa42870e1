"""Stages with Serve's replica hooks, `reconfigure` (fed by `user_config`) and `check_health`,
for tests/executors/test_hooks.py and tests/serving/test_hooks.py (importable on Ray)."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.exceptions import RayServeException

import servegraph as sg


def replica_id() -> str:
    """This replica's id on Serve; `local` in-process."""
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except RayServeException:
        return "local"


@sg.deployment(user_config={"greeting": "hello"})
class Greeter:
    """Sync `reconfigure`, which counts its calls: a running replica given a new user_config
    has been reconfigured twice."""

    def __init__(self) -> None:
        self.greeting = "unset"
        self.reconfigured = 0

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.greeting = config["greeting"]
        self.reconfigured += 1

    def greet(self, name: str) -> dict[str, Any]:
        return {"text": f"{self.greeting} {name}", "replica": replica_id(),
                "reconfigured": self.reconfigured}


@sg.deployment(user_config={"suffix": "!"})
class Suffixer:
    """Async `reconfigure`."""

    def __init__(self) -> None:
        self.suffix = "unset"

    async def reconfigure(self, config: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        self.suffix = config["suffix"]

    def add(self, greeted: dict[str, Any]) -> dict[str, Any]:
        return {**greeted, "text": greeted["text"] + self.suffix}


@sg.deployment(health_check_period_s=0.5, health_check_timeout_s=5, fuse=False)
class Fragile:
    """Turns unhealthy when asked to: its (async) `check_health` then raises, and Serve
    replaces the replica."""

    def __init__(self) -> None:
        self.broken = False

    async def check_health(self) -> None:
        if self.broken:
            raise RuntimeError("asked to break")

    def answer(self, text: str, breaks: bool) -> dict[str, Any]:
        self.broken = self.broken or breaks
        return {"text": text.upper(), "replica": replica_id()}


def greeting(greeter: Any = Greeter) -> sg.Graph:
    with sg.InputNode() as inp:
        out = Suffixer.bind().add.bind(greeter.bind().greet.bind(inp.name))
    return sg.Graph(out, name="greeting")


def fragile(stage: Any = Fragile) -> sg.Graph:
    with sg.InputNode() as inp:
        out = stage.bind().answer.bind(inp.text, inp.breaks)
    return sg.Graph(out, name="fragile")


GREETING = greeting()  # for a `serve deploy` config's application builder

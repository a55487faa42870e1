"""Stages and graphs for the control-flow tests (importable, so Serve replicas load them).

`Marker` stages append their name to a file when called: the file, shared by every process
on this machine, counts the calls made on any executor, Ray replicas included."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from typing_extensions import TypedDict

import servegraph as sg


class Answer(TypedDict):
    label: str
    confidence: float


@sg.deployment
class Marker:
    """Returns `name:text`, and notes the call in `calls_file`."""

    def __init__(self, name: str, calls_file: str) -> None:
        self.name = name
        self.calls_file = calls_file

    def __call__(self, text: str) -> str:
        with open(self.calls_file, "a") as calls:
            calls.write(self.name + "\n")
        return f"{self.name}:{text}"


def calls(calls_file: str | Path) -> list[str]:
    """The names of the `Marker` stages called so far, in order."""
    path = Path(calls_file)
    return path.read_text().split() if path.exists() else []


@sg.deployment
def clean(text: str) -> str:
    return text.strip().lower()


@sg.deployment
def boom(text: str) -> str:
    raise RuntimeError(f"boom on {text!r}")


def language_switch(calls_file: str) -> sg.Graph:
    """Route by `inp.lang`; `clean` feeds two arms and the output (shared: runs once); the
    `de` arm always fails (untaken, it must not fail the request)."""
    with sg.InputNode() as inp:
        text = clean.bind(inp.text)
        en = Marker.options(name="En").bind("en", calls_file).__call__.bind(text)
        fr = Marker.options(name="Fr").bind("fr", calls_file).__call__.bind(text)
        other = Marker.options(name="Other").bind("other", calls_file).__call__.bind(inp.text)
        routed = sg.switch(inp.lang, {"en": en, "fr": fr, "de": boom.bind(text)},
                           default=other, name="lang")
    return sg.Graph({"routed": routed, "clean": text}, name="lang_switch")


def strict_switch(calls_file: str) -> sg.Graph:
    """A switch without a default: an unknown key is the caller's error."""
    with sg.InputNode() as inp:
        en = Marker.options(name="En").bind("en", calls_file).__call__.bind(inp.text)
        fr = Marker.options(name="Fr").bind("fr", calls_file).__call__.bind(inp.text)
        out = sg.switch(inp.lang, {"en": en, "fr": fr}, name="lang")
    return sg.Graph(out, name="strict_switch")


@sg.deployment
def classify(text: str) -> str:
    """A 'classifier': the routing key comes from a stage's output."""
    return "question" if text.endswith("?") else "statement"


def classifier_route(calls_file: str) -> sg.Graph:
    with sg.InputNode() as inp:
        kind = classify.bind(inp.text)
        answer = Marker.options(name="Answerer").bind("answer", calls_file)
        echo = Marker.options(name="Echo").bind("echo", calls_file)
        out = sg.switch(kind, {"question": answer.__call__.bind(inp.text),
                               "statement": echo.__call__.bind(inp.text)}, name="intent")
    return sg.Graph(out, name="classifier_route")


@sg.deployment
def cheap(x: float) -> Answer:
    return {"label": "cheap", "confidence": x}


@sg.deployment
def confident(answer: Answer) -> bool:
    return answer["confidence"] >= 0.8


@sg.deployment
class Expensive:
    def __init__(self, calls_file: str) -> None:
        self.calls_file = calls_file

    def predict(self, x: float) -> Answer:
        with open(self.calls_file, "a") as calls:
            calls.write("expensive\n")
        return {"label": "expensive", "confidence": 1.0}


def cascade(calls_file: str) -> sg.Graph:
    """The cheap stage answers when confident; else the expensive one runs."""
    with sg.InputNode() as inp:
        first = cheap.bind(inp.x)
        out = sg.when(confident.bind(first), first,
                      Expensive.bind(calls_file).predict.bind(inp.x), name="escalate")
    return sg.Graph(out, name="cascade")


@sg.deployment
def enrich(x: int) -> dict[str, int]:
    if x < 0:
        raise ValueError(f"cannot enrich {x}")
    return {"square": x * x}


@sg.deployment(timeout_s=0.3)
async def slow_enrich(x: int) -> dict[str, int]:
    if x > 100:
        await asyncio.sleep(5)
    return {"square": x * x}


@sg.deployment
def combine(x: int, extra: dict[str, int] | None) -> dict[str, Any]:
    return {"x": x, "extra": extra}


def soft_dependency() -> sg.Graph:
    """`enrich` may fail and `slow_enrich` time out: the answer goes on without them."""
    with sg.InputNode() as inp:
        extra = sg.fallback(enrich.bind(inp.x), default=None, name="enrich")
        timed = sg.fallback(slow_enrich.bind(inp.x), default={"square": -1}, name="timed")
        out = combine.bind(inp.x, extra)
    return sg.Graph({"combined": out, "timed": timed}, name="soft_dependency")


@sg.deployment
def variant_a(user: str) -> str:
    return "a"


@sg.deployment
def variant_b(user: str) -> str:
    return "b"


def ab_split(sticky: bool = True) -> sg.Graph:
    """90/10 between two light variants (fused into the driver on Serve: no hop each)."""
    with sg.InputNode() as inp:
        out = sg.split({variant_a.bind(inp.user): 90, variant_b.bind(inp.user): 10},
                       key=inp.user if sticky else None, seed=None if sticky else 7,
                       name="ab")
    return sg.Graph(out, name="ab_split" if sticky else "ab_random")


@sg.deployment(fuse=False)
class Variant:
    """A variant in a deployment of its own, naming itself and its replica's process."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, user: str) -> dict[str, Any]:
        return {"variant": self.name, "pid": os.getpid()}


@sg.deployment
def driver_pid(user: str) -> int:
    """Fused into the driver: the driver replica's process."""
    return os.getpid()


def weighted_variants() -> sg.Graph:
    with sg.InputNode() as inp:
        one = Variant.options(name="VariantOne").bind("one").__call__.bind(inp.user)
        two = Variant.options(name="VariantTwo").bind("two").__call__.bind(inp.user)
        out = sg.split({one: 50, two: 50}, key=inp.user, name="ab")
        driver = driver_pid.bind(inp.user)
    return sg.Graph({"answer": out, "driver": driver}, name="weighted")


@sg.deployment
def primary(text: str) -> str:
    return text.upper()


@sg.deployment
def candidate(text: str) -> str:
    raise RuntimeError("the candidate is broken")


def mirrored() -> sg.Graph:
    with sg.InputNode() as inp:
        out = sg.shadow(primary.bind(inp.text), candidate.bind(inp.text), name="mirror")
    return sg.Graph(out, name="mirrored")


WEIGHTED = weighted_variants()  # a module attribute: a Serve config's builder imports it

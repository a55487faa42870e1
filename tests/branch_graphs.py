"""Small graphs with control flow, for the diagram and explain tests (importable by name)."""

from __future__ import annotations

import servegraph as sg


@sg.deployment
def english(text: str) -> str:
    return "en:" + text


@sg.deployment
def french(text: str) -> str:
    return "fr:" + text


@sg.deployment
def echo(text: str) -> str:
    return text


def by_language() -> sg.Graph:
    """A switch on the request's language, with a default."""
    with sg.InputNode() as inp:
        out = sg.switch(inp.lang, {"en": english.bind(inp.text), "fr": french.bind(inp.text)},
                        default=echo.bind(inp.text), name="lang")
    return sg.Graph(out, name="by_language")


def ab_test() -> sg.Graph:
    """A sticky 90/10 split by user."""
    with sg.InputNode() as inp:
        out = sg.split({english.bind(inp.text): 90, french.bind(inp.text): 10}, key=inp.user,
                       name="ab")
    return sg.Graph(out, name="ab_test")


def random_split() -> sg.Graph:
    """A split without a key, three ways, with a seed."""
    with sg.InputNode() as inp:
        out = sg.split({english.bind(inp.text): 1, french.bind(inp.text): 1,
                        echo.bind(inp.text): 1}, seed=7)
    return sg.Graph(out, name="random_split")


def guarded() -> sg.Graph:
    """A fallback to another stage, and one to a constant."""
    with sg.InputNode() as inp:
        text = inp.text
        out = sg.fallback(english.bind(text), echo.bind(text), name="safe")
        quiet = sg.fallback(french.bind(text))
    return sg.Graph({"safe": out, "quiet": quiet}, name="guarded")


def escalate() -> sg.Graph:
    """A when whose otherwise arm is a constant."""
    with sg.InputNode() as inp:
        out = sg.when(inp.hard, french.bind(inp.text), "easy")
    return sg.Graph(out, name="escalate")


def shadowed() -> sg.Graph:
    """A shadow: the candidate runs beside the primary, its result dropped."""
    with sg.InputNode() as inp:
        out = sg.shadow(english.bind(inp.text), french.bind(inp.text), name="canary")
    return sg.Graph(out, name="shadowed")


def language_and_ab() -> sg.Graph:
    """A switch and a split side by side, for drawing through Graphviz."""
    with sg.InputNode() as inp:
        lang = sg.switch(inp.lang, {"en": english.bind(inp.text), "fr": french.bind(inp.text)},
                         default=echo.bind(inp.text), name="lang")
        ab = sg.split({english.bind(inp.text): 90, french.bind(inp.text): 10}, key=inp.user,
                      name="ab")
    return sg.Graph({"lang": lang, "ab": ab}, name="language_and_ab")

"""Stages and a graph whose arguments are hostile to a template codec: user dicts keyed like the
tags (`ref`, `const`, `$ref`, ...), holding nodes and constants (importable, so a plan read back
from JSON and Serve replicas load them)."""

from __future__ import annotations

from typing import Any

import servegraph as sg


@sg.deployment
def inc(x: int) -> int:
    return x + 1


@sg.deployment
def echo(*args: Any, **kwargs: Any) -> Any:
    """Its arguments as they arrived: what the codec rebuilt from the templates."""
    return {"args": list(args), "kwargs": kwargs}


@sg.deployment
class Holder:
    """Keeps its constructor arguments: the templates of a class stage's init arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.init = {"args": list(args), "kwargs": kwargs}

    def show(self, value: Any) -> Any:
        return {"init": self.init, "value": value}


class Unjsonable:
    """A constant JSON cannot hold: an opaque template, the object in the plan's memory."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unjsonable)

    __hash__ = object.__hash__


# user data shaped like every tag, old and new: each must stay data
LOOKALIKES: list[Any] = [
    {"ref": "n0"}, {"const": 1}, {"list": [1, 2]}, {"tuple": [1]}, {"dict": {"a": 1}},
    {"opaque": 0, "repr": "x"}, {"$ref": "n0"}, {"$const": "n1"}, {"$list": []},
    {"$tuple": [2]}, {"$dict": {}}, {"$opaque": {"index": 0, "repr": "x"}}, {},
]


def hostile() -> tuple[sg.Graph, dict[str, Any]]:
    """A graph whose call nodes take lookalike dicts holding nodes, and the nodes by name (for
    overrides). `first` is read only inside a `{"ref": ...}` dict."""
    with sg.InputNode() as inp:
        first = inc.bind(inp.x)
        second = inc.bind(inp["$ref"])
        holder = Holder.bind({"ref": "n0"}, {"$const": [1, {"dict": 2}]}, opaque={"opaque": 0})
        out = echo.bind(
            {"ref": first}, [{"$ref": second}, ("ref", first)], *LOOKALIKES,
            nested={"dict": {"list": [{"ref": second}], "const": first}},
            shown=holder.show.bind({"$dict": first, "tuple": (second,)}))
    return sg.Graph(out, name="hostile"), {"first": first, "second": second}


def expected(first: Any, second: Any) -> Any:
    """What `hostile()` answers when `first` and `second` are these values."""
    return {
        "args": [{"ref": first}, [{"$ref": second}, ("ref", first)], *LOOKALIKES],
        "kwargs": {
            "nested": {"dict": {"list": [{"ref": second}], "const": first}},
            "shown": {"init": {"args": [{"ref": "n0"}, {"$const": [1, {"dict": 2}]}],
                               "kwargs": {"opaque": {"opaque": 0}}},
                      "value": {"$dict": first, "tuple": (second,)}},
        },
    }

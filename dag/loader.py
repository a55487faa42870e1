"""Loading a graph by name: `pkg.module:attr`, as the CLI and a Serve config's application
builder name one. Outside the CLI so that `serving` can load a graph without importing it.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ..errors import PipelineError


class LoadError(PipelineError):
    """A `MODULE:ATTR` that cannot be loaded as an `sg.Graph`."""


def load_graph(target: str) -> Any:
    """`pkg.module:attr` -> the `sg.Graph` there (a function is called with no arguments)."""
    from .graph import Graph

    return load_target(target, Graph)


def load_target(target: str, *kinds: type) -> Any:
    """`pkg.module:attr` -> the object there, an instance of one of `kinds` (default: an
    `sg.Graph` or an `sg.App`); a function there is called with no arguments."""
    from .app import App
    from .graph import Graph

    kinds = kinds or (Graph, App)
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise LoadError(f"expected MODULE:ATTR (e.g. servegraph.pipelines.search:graph), "
                         f"got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LoadError(f"cannot import module {module_name!r}: {exc}") from exc
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise LoadError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if callable(value) and not isinstance(value, kinds):
        value = value()
    if not isinstance(value, kinds):
        wanted = " or ".join(f"an sg.{kind.__name__}" for kind in kinds)
        raise LoadError(f"{target} is a {type(value).__name__}, not {wanted}")
    return value

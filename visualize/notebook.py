"""Graphs, apps and plans shown as their diagram in Jupyter and IPython.

`dag/` and `compiler/` sit below `visualize/` and cannot import it, so the classes carry no
`_repr_svg_` of their own. Instead this module registers a formatter with the running IPython
shell for each of them, by type name (IPython matches the name when an object is displayed):
`import servegraph` does it when it runs inside IPython, and
`%load_ext servegraph.visualize.notebook` does it by hand.

What a displayed object shows: the SVG of its diagram (a plan's includes its GPU layout);
without Graphviz (`dot` or the `graphviz` package), its Mermaid text as a ```` ```mermaid ````
Markdown block, which JupyterLab 4.1 and GitHub draw; when no diagram can be made (a graph
that does not compile), a one-line Markdown note: its repr and why. Markdown is never
offered beside the SVG: Jupyter prefers Markdown to SVG, and would hide the drawing.
"""

from __future__ import annotations

import importlib.util
import shutil
from typing import Any, Protocol

from ..compiler import as_plan
from ..errors import PipelineError
from . import render

# the displayed types, by (module, class name): IPython matches a subclass by its bases too
DISPLAYED = (
    ("servegraph.dag.graph", "Graph"),
    ("servegraph.dag.app", "App"),
    ("servegraph.compiler.pipeline", "CompiledPipeline"),
    ("servegraph.compiler.app", "CompiledApp"),
)


class Shell(Protocol):
    """What is needed of IPython's `InteractiveShell`: its display formatter."""

    display_formatter: Any


def mimebundle(obj: Any) -> dict[str, str]:
    """The display data of a graph, app or plan: `image/svg+xml`, else `text/markdown`
    (Mermaid, or why there is no diagram). Never raises: a failing repr would put a traceback
    where the user looked for a picture, so every failure becomes the note."""
    try:
        plan = as_plan(obj)
    except Exception as error:  # a repr must not raise (see the docstring)
        return {"text/markdown": _note(obj, error)}
    if graphviz_found():
        try:
            return {"image/svg+xml": render(plan, format="svg").decode()}
        except PipelineError:
            pass  # `dot` failed after all: the Mermaid text still draws the plan
    try:
        mermaid = render(plan, format="mmd").decode()
    except Exception as error:  # as above
        return {"text/markdown": _note(obj, error)}
    return {"text/markdown": f"```mermaid\n{mermaid}```\n"}


def graphviz_found() -> bool:
    """Whether an SVG can be drawn here: the `graphviz` package and its `dot` program."""
    return importlib.util.find_spec("graphviz") is not None and shutil.which("dot") is not None


def _note(obj: Any, error: BaseException) -> str:
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"`{obj!r}`: no diagram ({type(error).__name__}: {first_line})"


def register(shell: Shell) -> None:
    """Show every type in `DISPLAYED` through `mimebundle` in this shell (IPython's
    `_repr_mimebundle_` formatter, keyed by type name; the plain-text repr stays). Where the
    shell shows neither SVG nor Markdown (the terminal's IPython), no diagram is drawn."""
    display = shell.display_formatter

    def diagram(obj: Any) -> dict[str, str]:
        rich = [display.formatters[mime].enabled for mime in ("image/svg+xml", "text/markdown")
                if mime in display.formatters]
        return mimebundle(obj) if any(rich) else {}

    for module, name in DISPLAYED:
        display.mimebundle_formatter.for_type_by_name(module, name, diagram)


def load_ipython_extension(ipython: Shell) -> None:
    """`%load_ext servegraph.visualize.notebook`: what `import servegraph` does in IPython."""
    register(ipython)

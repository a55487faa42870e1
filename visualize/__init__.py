"""Diagrams of a pipeline: Mermaid (`.mmd`) and Graphviz DOT (`.dot`) as text, and SVG/PNG/PDF
through the `dot` program when the `graphviz` package and program are installed.

A graph is drawn from its compiled plan: each Serve deployment is a box (a cluster) holding
its call nodes, with its replica count; the input, its selected fields and the outputs sit
outside; a map is drawn as a parallelogram, a branch (switch, when, split, fallback, shadow)
as a diamond whose incoming edges name the key and the arms, and a node that runs only when
its arm is taken with a dashed border. Labels are escaped for each format, so a stage
named `<script>` or `a"b` cannot break or inject into the diagram.
"""

from __future__ import annotations

import os

from ..compiler import CompiledPipeline, as_plan
from ..compiler.appplan import AppPlan
from ..dag import App, Graph
from ..errors import PipelineError
from .model import Diagram, LiveStatus, diagram_of
from .render_dot import to_dot
from .render_mermaid import to_mermaid

__all__ = ["Diagram", "LiveStatus", "diagram_of", "render", "to_dot", "to_mermaid"]

_TEXT_FORMATS = {"mmd": to_mermaid, "mermaid": to_mermaid, "dot": to_dot, "gv": to_dot}
_BINARY_FORMATS = {"svg", "png", "pdf"}


def render(graph_or_plan: Graph | CompiledPipeline | App | AppPlan,
           path: str | os.PathLike[str] | None = None,
           format: str | None = None, live: dict[str, LiveStatus] | None = None) -> bytes:
    """Draw the pipeline; write it to `path` when given. The format comes from `format` or
    the path's suffix (.svg .png .pdf .dot .mmd). `live` colours each deployment by the
    status Serve reports for it. An `sg.App` is drawn whole, a stage its graphs share once.
    Returns the bytes written."""
    plan = as_plan(graph_or_plan)
    fmt = (format or (os.path.splitext(os.fspath(path))[1].lstrip(".") if path else "")).lower()
    if fmt in _TEXT_FORMATS:
        data = _TEXT_FORMATS[fmt](plan, live).encode()
    elif fmt in _BINARY_FORMATS:
        data = _pipe_through_dot(to_dot(plan, live), fmt)
    else:
        raise PipelineError(f"cannot render format {fmt or '(none)'!r}: use one of "
                            ".svg .png .pdf .dot .mmd, or pass format=")
    if path is not None:
        with open(path, "wb") as handle:
            handle.write(data)
    return data


def _pipe_through_dot(source: str, fmt: str) -> bytes:
    try:
        import graphviz
    except ImportError as exc:
        raise PipelineError(
            f"rendering .{fmt} needs the graphviz package and program: pip install graphviz; "
            "apt-get install -y graphviz (.dot and .mmd need neither)") from exc
    try:
        return graphviz.Source(source).pipe(format=fmt)
    except graphviz.ExecutableNotFound as exc:
        raise PipelineError(
            f"rendering .{fmt} needs Graphviz's `dot` program: apt-get install -y graphviz "
            "(or brew install graphviz); .dot and .mmd work without it") from exc
    except graphviz.CalledProcessError as exc:  # a broken install: say so, as above
        raise PipelineError(
            f"Graphviz's `dot` failed rendering .{fmt} (exit {exc.returncode}): "
            f"{exc.stderr or b''!r}; reinstall Graphviz, or write .dot or .mmd") from exc


"""Graphviz DOT text of a plan. Every label is a quoted DOT string with quotes, backslashes
and newlines escaped; SVG output from `dot` escapes `<` and `&` itself."""

from __future__ import annotations

from ..compiler import CompiledPipeline
from ..compiler.appplan import AppPlan
from .app_model import diagram_for
from .model import STATUS_COLOURS, Box, LiveStatus

_SHAPES = {"input": "invhouse", "select": "note", "call": "box", "map": "parallelogram",
           "const": "cylinder", "branch": "diamond", "output": "house"}


def quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _box(box: Box) -> str:
    """A node's statement; a lazy one (run only when its branch arm is taken) dashed."""
    dashed = ", style=dashed" if box.lazy else ""
    return f"{box.id} [label={quote(box.label)}, shape={_SHAPES[box.shape]}{dashed}];"


def to_dot(plan: CompiledPipeline | AppPlan, live: dict[str, LiveStatus] | None = None
            ) -> str:
    diagram = diagram_for(plan, live)
    lines = [f"digraph {quote(diagram.title)} {{", "  rankdir=LR;",
             '  graph [fontname="Helvetica", fontsize=11];',
             '  node [fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=9, fontcolor=gray30];']
    for cluster in diagram.clusters:
        lines.append(f"  subgraph cluster_{cluster.id} {{")
        lines.append(f"    label={quote(cluster.label)}; style=rounded; color=gray50;")
        if cluster.status is not None:
            fill = STATUS_COLOURS.get(cluster.status, "#eeeeee")
            lines.append(f'    style="rounded,filled"; fillcolor="{fill}";')
        lines.extend(f"    {_box(box)}" for box in diagram.boxes if box.cluster == cluster.id)
        lines.append("  }")
    lines.extend(f"  {_box(box)}" for box in diagram.boxes if box.cluster is None)
    lines.extend(f"  {source} -> {target}" + (f" [label={quote(kind)}];" if kind else ";")
                 for source, target, kind in diagram.edges)
    if diagram.gpus:
        lines.append("  subgraph cluster_gpus {")
        lines.append(f'    label={quote(diagram.gpu_title)}; style="rounded,dashed"; '
                     "color=gray50;")
        lines.extend(f'    {gpu.id} [label={quote(gpu.label)}, shape=box3d, style=filled, '
                     'fillcolor="#e8eefc"];' for gpu in diagram.gpus)
        lines.append("  }")
        # beside the graph, after the output; each GPU's label names the replicas it holds
        lines.extend(f"  out -> {gpu.id} [style=invis];" for gpu in diagram.gpus)
        # each stage tied to the GPUs it is on (Mermaid's -.-), leaving the ranks as they are
        lines.extend(f"  {box} -> {gpu} [style=dashed, dir=none, color=gray50, "
                     "constraint=false];" for box, gpu in diagram.gpu_edges)
    lines.append("}")
    return "\n".join(lines) + "\n"

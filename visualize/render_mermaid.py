"""Mermaid flowchart text of a plan (GitHub renders it in Markdown). Labels are quoted and
use Mermaid's entity codes for characters that would end a label or open HTML."""

from __future__ import annotations

from ..compiler import CompiledPipeline
from ..compiler.appplan import AppPlan
from .app_model import diagram_for
from .model import STATUS_COLOURS, LiveStatus

_ENTITIES = {"&": "#amp;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "#": "#35;",
             "\n": "<br/>", "[": "#91;", "]": "#93;", "{": "#123;", "}": "#125;", "|": "#124;"}
_SHAPES = {"input": ('[/"', '"/]'), "select": ('["', '"]'), "call": ('["', '"]'),
           "map": ('[/"', '"\\]'), "const": ('[("', '")]'), "branch": ('{"', '"}'),
           "output": ('(["', '"])')}
LAZY_STYLE = "stroke-dasharray: 5 5"  # a node run only when its branch arm is taken


def label(text: str) -> str:
    return "".join(_ENTITIES.get(char, char) for char in text)


def to_mermaid(plan: CompiledPipeline | AppPlan,
               live: dict[str, LiveStatus] | None = None) -> str:
    diagram = diagram_for(plan, live)
    lines = ["flowchart LR"]
    for cluster in diagram.clusters:
        lines.append(f'  subgraph {cluster.id}["{label(cluster.label)}"]')
        for box in diagram.boxes:
            if box.cluster == cluster.id:
                start, end = _SHAPES[box.shape]
                lines.append(f"    {box.id}{start}{label(box.label)}{end}")
        lines.append("  end")
    for box in diagram.boxes:
        if box.cluster is None:
            start, end = _SHAPES[box.shape]
            lines.append(f"  {box.id}{start}{label(box.label)}{end}")
    lines.extend(f"  style {cluster.id} fill:{STATUS_COLOURS.get(cluster.status, '#eeeeee')}"
                 for cluster in diagram.clusters if cluster.status is not None)
    lazy = [box.id for box in diagram.boxes if box.lazy]
    if lazy:
        lines.extend([f"  classDef lazy {LAZY_STYLE}", f"  class {','.join(lazy)} lazy"])
    lines.extend(f"  {source} -->|{label(kind)}| {target}" if kind else f"  {source} --> {target}"
                 for source, target, kind in diagram.edges)
    if diagram.gpus:
        lines.append(f'  subgraph gpus["{label(diagram.gpu_title)}"]')
        lines.extend(f'    {gpu.id}[["{label(gpu.label)}"]]' for gpu in diagram.gpus)
        lines.append("  end")
        lines.extend(f"  {box} -.- {gpu}" for box, gpu in diagram.gpu_edges)
    return "\n".join(lines) + "\n"

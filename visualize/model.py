"""What a diagram shows, independent of its format: boxes, clusters and edges of a plan.

A branch node (switch, when, split, fallback, shadow) is a diamond; the edges into it are
labelled with the part each source plays (`key`, `if`, an arm with its split share) instead of
the value's type, and the arms that are constants are written in the diamond. A lazy node, run
only when a branch takes an arm that needs it, is drawn dashed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..compiler import CompiledPipeline, GpuLayout, NodePlan, StagePlan
from ..compiler.cluster import format_bytes
from ..compiler.explain import arm_texts, constant_text, key_role
from ..compiler.templates import refs

Shape = Literal["input", "select", "call", "map", "const", "branch", "output"]


@dataclass(frozen=True)
class Box:
    id: str
    label: str
    shape: Shape
    cluster: str | None = None
    lazy: bool = False  # runs only when a branch takes an arm that needs it: drawn dashed


@dataclass(frozen=True)
class Cluster:
    id: str
    label: str
    status: str | None = None  # live Serve status (HEALTHY, UPDATING, UNHEALTHY, ...)
    deployment: str = ""       # the Serve deployment it draws


@dataclass(frozen=True)
class LiveStatus:
    """What Serve reports for one deployment, to colour the plan with."""

    status: str
    replicas: dict[str, int]

    def summary(self) -> str:
        counts = ", ".join(f"{state} {n}" for state, n in sorted(self.replicas.items()))
        return f"{self.status}: {counts}" if counts else self.status


STATUS_COLOURS = {"HEALTHY": "#d9f2d9", "UPDATING": "#fff2cc", "UPSCALING": "#fff2cc",
                  "DOWNSCALING": "#fff2cc", "UNHEALTHY": "#f8d0d0", "DEPLOY_FAILED": "#f8d0d0"}


@dataclass(frozen=True)
class GpuBox:
    """One GPU of the plan's layout: where it is, how full, and the replicas sharing it."""

    id: str
    label: str


@dataclass
class Diagram:
    title: str
    boxes: list[Box] = field(default_factory=list)
    clusters: list[Cluster] = field(default_factory=list)
    # source, target, label: the value's type, or the part it plays in a branch (`key`, an arm)
    edges: list[tuple[str, str, str]] = field(default_factory=list)
    gpu_title: str = ""
    gpus: list[GpuBox] = field(default_factory=list)
    gpu_edges: list[tuple[str, str]] = field(default_factory=list)  # a stage's box -> its GPU


def diagram_of(plan: CompiledPipeline, live: dict[str, LiveStatus] | None = None) -> Diagram:
    """The plan as boxes; with `live`, each deployment labelled and coloured by its status."""
    diagram = Diagram(title=plan.name)
    live = live or {}
    served = plan.served()
    cluster_ids = {stage.name: f"d{index}" for index, stage in enumerate(served)}
    fused = plan.fused()
    if fused:  # one deployment holding several stages: the driver, running them in-process
        driver = plan.driver.name
        cluster_ids[driver] = f"d{len(served)}"
        cluster_ids.update({stage.name: cluster_ids[driver] for stage in fused})
    types = {node.id: node.output_type or "" for node in plan.nodes}
    for stage in [*served, plan.driver] if fused else served:
        label, state = _stage_label(stage, fused), live.get(stage.name)
        if state is not None:
            label = f"{label} · {state.summary()}"
        diagram.clusters.append(Cluster(cluster_ids[stage.name], label,
                                        state.status if state else None, stage.name))
    for node in plan.nodes:
        cluster = cluster_ids.get(node.stage) if node.stage else None
        label = _node_label(node)
        if node.op == "input" and not fused:  # the driver, drawn nowhere else, receives it
            label = f"{label} · {_stage_label(plan.driver)}"
        diagram.boxes.append(Box(node.id, label, node.op, cluster, node.lazy))
        diagram.edges.extend((source, node.id, kind) for source, kind in _edges_into(node, types))
    diagram.boxes.append(Box("out", "output", "output"))
    for source in dict.fromkeys(refs(plan.outputs)):
        diagram.edges.append((source, "out", types[source]))
    add_gpu_layout(diagram, plan.gpu_layout, plan.nodes)
    return diagram


def _node_label(node: NodePlan) -> str:
    """A box's text; a branch's adds its constant arms (`otherwise = 'x'`) and a forced arm."""
    if node.op == "const":
        return f"{node.label} = constant"
    if node.branch is None:
        return node.label
    lines = [node.label]
    for text, template in zip(arm_texts(node.branch), node.args[1:]):
        if next(refs(template), None) is None:
            lines.append(f"{text} = {constant_text(template)}")
    if node.branch.forced is not None:
        lines.append(f"forced: {node.branch.forced}")
    return "\n".join(lines)


def _edges_into(node: NodePlan, types: dict[str, str]) -> list[tuple[str, str]]:
    """The source and label of each edge into a node: the value's type; into a branch, the
    parts the source plays (a node read by two arms: one edge, both labels)."""
    if node.branch is None:
        sources = refs(*node.templates())
        return [(source, types[source]) for source in dict.fromkeys(sources)]
    roles: dict[str, list[str]] = {}
    for template, role in zip(node.args, [key_role(node.branch), *arm_texts(node.branch)]):
        for source in refs(template):
            played = roles.setdefault(source, [])
            if role not in played:
                played.append(role)
    return [(source, ", ".join(played)) for source, played in roles.items()]


def add_gpu_layout(diagram: Diagram, layout: GpuLayout | None, nodes: list[NodePlan]) -> None:
    """The GPU layout beside the graph: a box per GPU listing the replicas that share it,
    with a dashed line from each stage's first call node (of `nodes`) to the GPUs its
    replicas use."""
    if layout is None:
        return
    where = "" if layout.bounded else " (no cluster spec)"
    diagram.gpu_title = (f"GPU layout{where}: {layout.used} GPU{'s' if layout.used != 1 else ''}"
                         f" used, lower bound {layout.lower_bound}")
    first_box = {}
    for node in nodes:
        if node.stage is not None:
            first_box.setdefault(node.stage, node.id)
    for index, gpu in enumerate(layout.gpus):
        gpu_id = f"gpu{index}"
        memory = ""
        if gpu.memory_used is not None and gpu.memory:
            memory = f" · {format_bytes(gpu.memory_used)} of {format_bytes(gpu.memory)}"
        held = [f"{r.stage}#{r.replica} {r.gpus:g}" for r in gpu.replicas] or ["free"]
        diagram.gpus.append(GpuBox(gpu_id, "\n".join(
            [f"{gpu.node} GPU {gpu.index} · {gpu.fraction_used:.0%}{memory}", *held])))
        for stage in dict.fromkeys(r.stage for r in gpu.replicas):
            if stage in first_box:
                diagram.gpu_edges.append((first_box[stage], gpu_id))


def _stage_label(stage: StagePlan, fused: list[StagePlan] | None = None) -> str:
    facts = stage.resources
    count = facts.replicas
    if count.autoscaling:
        replicas = f"{count.min}-{count.max} replicas"
    else:
        replicas = f"{count.start} replica{'s' if count.start != 1 else ''}"
    parts = [stage.name, replicas, f"{facts.cpus:g} CPU"]
    if stage.role == "driver" and fused:
        parts.append(f"fused: {', '.join(s.name for s in fused)}")
    if facts.gpus is None:
        parts.append(f"GPU ? ({format_bytes(facts.gpu_memory)}, no cluster spec)")
    elif facts.gpus:
        parts.append(f"{facts.gpus:g} GPU")
    if stage.batching:
        sizes = ", ".join(f"{m}≤{b.max_batch_size}" for m, b in stage.batching.items())
        parts.append(f"batch {sizes}")
    if stage.timeout_s is not None:
        parts.append(f"timeout {stage.timeout_s:g}s")
    if stage.max_retries:
        parts.append(f"retries {stage.max_retries}")
    return " · ".join(parts)

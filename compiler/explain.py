"""`explain`: what the compiler decided, as text: deployments, resources, fusion, GPU layout."""

from __future__ import annotations

from .cluster import format_bytes
from .plan import Plan, ReplicaRange, StagePlan


def explain(plan: Plan) -> str:
    """What the compiler decided, as text: deployments, their resources, the GPU layout."""
    fused = plan.fused()
    inside = f" ({len(fused)} fused into the driver)" if fused else ""
    lines = [f"pipeline {plan.name!r}: {len(plan.nodes)} nodes, {len(plan.served())} "
             f"stage deployments + driver{inside}; passes: {', '.join(plan.passes)}"]
    if plan.cluster is not None:
        lines.append(f"cluster: {plan.cluster.describe()}")
    lines.append("deployments:")
    for stage in [*plan.served(), plan.driver]:
        lines.append(f"  {stage.name:<20} {stage.kind:<8} "
                     f"{', '.join(_deployment(plan, stage, fused))}")
    if "fuse" in plan.passes:
        lines.append("fusion:")
        for stage in plan.deployments:
            where = f"fused into {stage.fused_into}" if stage.fused_into else "own deployment"
            lines.append(f"  {stage.name:<20} {where}: {stage.fusion}")
    return "\n".join([*lines, *_gpu_layout(plan)])


def replicas_text(replicas: ReplicaRange) -> str:
    """`2 replicas`, or `autoscaling 1..100, 1 at start`."""
    if replicas.autoscaling:
        return f"autoscaling {replicas.min}..{replicas.max}, {replicas.start} at start"
    return f"{replicas.start} replica{'s' if replicas.start != 1 else ''}"


def _deployment(plan: Plan, stage: StagePlan, fused: list[StagePlan]) -> list[str]:
    """One deployment's line: its replicas, what each reserves, and how it is called."""
    facts = stage.resources
    parts = [replicas_text(facts.replicas), f"{facts.cpus:g} CPU"]
    if facts.gpus is None:
        parts.append(f"GPU fraction unknown (gpu_memory {format_bytes(facts.gpu_memory)}: "
                     "serving needs a cluster spec)")
    elif facts.gpus:
        how = "declared"
        if facts.gpus_from_memory and plan.cluster is not None:
            how = (f"from gpu_memory {format_bytes(facts.gpu_memory)} of "
                   f"{format_bytes(plan.cluster.smallest_gpu_memory)}")
        parts.append(f"{facts.gpus:g} GPU ({how})")
    for method, batch in stage.batching.items():
        parts.append(f"batch {method} <= {batch.max_batch_size} "
                     f"within {batch.batch_wait_timeout_s * 1000:g} ms")
        if batch.max_splits:
            parts.append(f"failures isolated by splitting the batch in halves (at most "
                         f"{batch.max_splits} deep)")
    limit = stage.options.get("max_ongoing_requests")
    if limit is not None:
        parts.append(f"max_ongoing_requests={limit}")
    if stage.timeout_s is not None:
        parts.append(f"timeout {stage.timeout_s:g} s per call")
    if stage.max_retries:
        parts.append(f"{stage.max_retries} retr{'ies' if stage.max_retries > 1 else 'y'}")
    if stage.role == "driver" and fused:
        parts.append(f"runs {', '.join(s.name for s in fused)} in-process")
    return parts


def _gpu_layout(plan: Plan) -> list[str]:
    """The GPUs the plan uses, what shares each, and how far autoscaled stages can grow."""
    layout = plan.gpu_layout
    unknown = [stage.name for stage in plan.deployments if stage.resources.gpus is None]
    if unknown:
        counted = "" if layout is None else " (the GPUs below leave them out)"
        note = [f"GPU fractions unknown without a cluster spec: {', '.join(unknown)}{counted}"]
    else:
        note = []
    if layout is None:
        return note or ["GPU layout: no GPU stages"]
    where = "on the cluster" if layout.bounded else "(no cluster spec: GPUs counted as needed)"
    lines = [*note, f"GPU layout {where}: {layout.used} GPU{'s' if layout.used != 1 else ''} "
             f"used, lower bound {layout.lower_bound}"]
    for gpu in layout.gpus:
        size = f" of {format_bytes(gpu.memory)}" if gpu.memory else ""
        memory = f", {format_bytes(gpu.memory_used)}{size}" if gpu.memory_used is not None \
            else ""
        held = ", ".join(f"{r.stage}#{r.replica} {r.gpus:g}" for r in gpu.replicas) or "free"
        lines.append(f"  {gpu.node} GPU {gpu.index}: {gpu.fraction_used:.0%}{memory}: {held}")
    for room in layout.headroom:
        lines.append(f"  headroom: {room.stage} starts {room.placed}, may scale to "
                     f"{room.max_replicas}; {room.fits} more fit on the GPUs left"
                     + ("" if room.placed + room.fits >= room.max_replicas
                        else " (the rest would stay pending)"))
    return lines

"""`explain`: what the compiler decided, as text: deployments, resources, fusion, control flow,
GPU layout. The texts of a branch's arms (`arm_texts`) and of the constants an arm may be
(`constant_text`) are made here once, and the diagrams label their edges with them too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import templates
from .cluster import format_bytes
from .plan import BranchPlan, NodePlan, Plan, ReplicaRange, StagePlan
from .profile import StagePrediction


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
            batches = batch_texts(stage) if stage.fused_into else []
            lines.append(f"  {stage.name:<20} {where}: {'; '.join([stage.fusion, *batches])}")
    return "\n".join([*lines, *capacity_lines(plan), *_control_flow(plan),
                      *_gpu_layout(plan)])


def capacity_lines(plan: Plan) -> list[str]:
    """The capacity pass's predictions (`plan.capacity`): per stage and the driver, replicas,
    CPUs, expected batch, throughput and utilisation at the load planned for; then the
    pipeline's throughput, its p99 at that load, and the bottleneck."""
    capacity = plan.capacity
    if capacity is None:
        return []
    goal = "the most throughput" if capacity.target is None else capacity.target.describe()
    lines = [f"capacity (planned from a profile for {goal} on {capacity.cpus:g} CPUs):"]
    for row in capacity.stages:
        batch = f", batch {row.batch_size}" if row.batch_size > 1 else ""
        where = "in the driver" if row.in_driver else f"{row.replicas} x {row.cpus:g} CPU"
        lines.append(f"  {row.stage:<20} {where}{batch}: "
                     f"{row.throughput_rps:.3g} req/s, {row.utilisation:.0%} busy, "
                     f"p99 {_ms(row.p99_ms / 1000)} ms{_gpu_share(plan, row)}")
    lines.append(f"  predicted: {capacity.capacity_rps:.3g} req/s at most (the CPUs allow "
                 f"{capacity.cpu_bound_rps:.3g}); p99 {_ms(capacity.p99_ms / 1000)} ms at "
                 f"{capacity.at_rps:.3g} req/s; bottleneck: {capacity.bottleneck}")
    if capacity.layout:
        lines.append(f"  layout: {capacity.layout}")
    return lines


def _gpu_share(plan: Plan, row: StagePrediction) -> str:
    """`; GPU memory measured 6GiB, 0.45 GPU a replica` for a stage whose GPU memory the
    profile measured (its share of a GPU was raised to hold it where it did not)."""
    if row.gpu_memory_bytes is None:
        return ""
    facts = plan.stage(row.stage).resources
    return (f"; GPU memory measured {format_bytes(row.gpu_memory_bytes)}, "
            f"{facts.gpus if facts.gpus is not None else '?'} GPU a replica")


def replicas_text(replicas: ReplicaRange) -> str:
    """`2 replicas`, or `autoscaling 1..100, 1 at start`."""
    if replicas.autoscaling:
        return f"autoscaling {replicas.min}..{replicas.max}, {replicas.start} at start"
    return f"{replicas.start} replica{'s' if replicas.start != 1 else ''}"


def batch_texts(stage: StagePlan) -> list[str]:
    """Each `sg.batch` method's batch (the planned size, when the capacity pass chose one)
    and how deep a failing batch is split."""
    parts = []
    for method, batch in stage.batching.items():
        at_once = "" if batch.max_concurrent_batches == 1 else \
            f", {batch.max_concurrent_batches} at once"
        planned = "" if not batch.planned else (
            f" (planned; declared {batch.declared_max_batch_size}, "
            f"{batch.declared_max_concurrent_batches} at once)")
        wait = f"within {_ms(batch.batch_wait_timeout_s)} ms"
        declared = batch.declared_batch_wait_timeout_s
        if declared is not None and declared != batch.batch_wait_timeout_s:
            wait += f" (planned; declared {_ms(declared)} ms)"
        parts.append(f"batch {method} <= {batch.max_batch_size}{at_once}{planned} {wait}")
        if batch.max_splits:
            parts.append(f"failures isolated by splitting the batch in halves (at most "
                         f"{batch.max_splits} deep)")
    return parts


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
    parts += batch_texts(stage)
    if stage.multiplexed is not None:
        parts.append(f"multiplexed: up to {stage.multiplexed.max_models_per_replica} models "
                     f"per replica ({stage.multiplexed.loader})")
    limit = stage.options.get("max_ongoing_requests")
    if limit is not None:
        why = f" ({stage.limit_reason})" if stage.limit_reason not in ("", "declared") else ""
        parts.append(f"max_ongoing_requests={limit}{why}")
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


def arm_texts(branch: BranchPlan) -> list[str]:
    """Each arm as a reader needs it: its label, with a split's share of the weight
    (`v1 90%`), what a fallback's default and a shadow's candidate are for."""
    texts = list(branch.arms)
    if branch.kind == "split":
        total = sum(branch.weights)
        texts = [f"{arm} {100 * weight / total:.3g}%"
                 for arm, weight in zip(branch.arms, branch.weights)]
    elif branch.kind == "fallback":
        texts[1] = f"{texts[1]} (on failure)"
    elif branch.kind == "shadow":
        texts[1] = f"{texts[1]} (shadow, result dropped)"
    return texts


def key_role(branch: BranchPlan) -> str:
    """What the key's edge is called in a diagram: `if` for a when's condition."""
    return "if" if branch.kind == "when" else "key"


def constant_text(template: Any) -> str:
    """A template that reads no node, as Python would show its value (an opaque constant by
    the repr kept in the plan)."""
    tag, body = templates.split(template)
    if tag == templates.CONST:
        return repr(body)
    if tag == templates.OPAQUE:
        return str(body["repr"])
    if tag == templates.DICT:
        return "{" + ", ".join(f"{key!r}: {constant_text(item)}"
                               for key, item in body.items()) + "}"
    items = [constant_text(item) for item in body]
    if tag == templates.TUPLE:
        return f"({items[0]},)" if len(items) == 1 else "(" + ", ".join(items) + ")"
    return "[" + ", ".join(items) + "]"


def _reads_text(template: Any, labels: Mapping[str, str]) -> str:
    """What an argument of a branch reads: a node's label, several in parentheses, or the
    constant it is."""
    whole = templates.ref_of(template)
    if whole is not None:
        return labels[whole]
    read = list(dict.fromkeys(templates.refs(template)))
    if read:
        return "(" + ", ".join(labels[source] for source in read) + ")"
    return constant_text(template)


def _control_flow(plan: Plan) -> list[str]:
    """One line per branch node: how it picks its arm, and what each arm reads."""
    branches = [node for node in plan.nodes if node.branch is not None]
    if not branches:
        return []
    labels = {node.id: node.label for node in plan.nodes}
    return ["control flow:", *(f"  {_branch_line(plan, node, labels)}" for node in branches)]


def _branch_line(plan: Plan, node: NodePlan, labels: Mapping[str, str]) -> str:
    branch = node.branch
    assert branch is not None
    arms = ", ".join(f"{text} -> {_reads_text(template, labels)}"
                     for text, template in zip(arm_texts(branch), node.args[1:]))
    parts = [_key_text(branch, node.args[0], labels), arms]
    if branch.forced is not None:
        parts.append(f"forced: {branch.forced} (testing.route)")
    lazy = _lazy_nodes(plan, node)
    if lazy:
        parts.append(f"{lazy} nodes run only when their arm is taken" if lazy > 1
                     else "1 node runs only when its arm is taken")
    where = f" ({node.site})" if node.site else ""
    return f"{node.label}{where}: " + "; ".join(parts)


def _key_text(branch: BranchPlan, key: Any, labels: Mapping[str, str]) -> str:
    """How a branch picks its arm: by its key's value, by weight, or by failure."""
    if branch.kind == "switch":
        return f"on {_reads_text(key, labels)}"
    if branch.kind == "when":
        return f"if {_reads_text(key, labels)}"
    if branch.kind == "split" and branch.sticky:
        return f"sticky by {_reads_text(key, labels)}"
    if branch.kind == "split":
        return "random" if branch.seed is None else f"random (seed {branch.seed})"
    return "no key"


def _lazy_nodes(plan: Plan, node: NodePlan) -> int:
    """How many lazy nodes stand behind the branch's lazy arms (reached through lazy nodes
    only): what runs only when an arm needing it is taken."""
    assert node.branch is not None
    by_id = {each.id: each for each in plan.nodes}
    arms = node.args[1:]
    todo = [source for index in node.branch.lazy_arms for source in templates.refs(arms[index])]
    owned: set[str] = set()
    while todo:
        current = by_id[todo.pop()]
        if current.lazy and current.id not in owned:
            owned.add(current.id)
            todo.extend(templates.refs(*current.templates()))
    return len(owned)


def _ms(seconds: float) -> str:
    """Milliseconds to three figures, whole ones from a second up: `2.04`, `25`, `9160`."""
    ms = seconds * 1000
    return f"{ms:.0f}" if ms >= 1000 else f"{ms:.3g}"

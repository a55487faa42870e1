"""The pack pass: put every GPU replica on a GPU of the cluster spec.

The packer makes the choices Ray Serve and Ray make, so that they land where the plan says.
With `RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY=1` (set by the runner's embedded Ray, the test
session and the RayService head) Serve orders pending replicas by GPUs, then CPUs, largest
first, and sends each to a node: among nodes already holding a replica, else among idle ones,
the one left with the least room (Serve's `_find_best_fit_node_for_pack`). On that node Ray
gives a fraction the GPU instance with the least room that still fits (best fit, lowest index
on a tie) and whole GPUs the first fully free instances (`NodeResourceInstanceSet::
TryAllocate`). Fractions are integers in Ray's 1/10000 unit, so "sums to 1 or less" is exact.

A fraction the user declared (`num_gpus=0.25`) is what Ray schedules by, whatever memory the
stage says it needs; when that memory does not fit beside a GPU's other replicas the pass fails
naming both stages. Without a cluster spec the pass counts the GPUs the plan needs (of the
stages whose fraction is known: one derived from `gpu_memory` needs the GPUs' size).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import PackingError
from ..cluster import ClusterSpec, format_bytes
from ..plan import GpuLayout, GpuSlot, Headroom, PlacedReplica, StageResources
from ..state import CompileState, spec_of_group
from .resources import RESOLUTION, memory_text, to_units

PASS = "pack"
# Serve's own packing of replicas onto nodes, which this pass models; the Serve controller
# must run with it (serving's embedded Ray and test session, and the RayService head set it)
PACK_SCHEDULING_ENV = {"RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY": "1"}


@dataclass(frozen=True)
class Demand:
    """One replica to place: `units` of a GPU (multiples of RESOLUTION: whole GPUs). Made
    from a stage's `StageResources` by `replica_demands`; the packer's own item, not a fact."""

    stage: str
    replica: int
    units: int
    memory: int | None = None
    order: int = 0  # the stage's position, for a stable result
    cpus: float = 0.0
    models: int = 1  # a multiplexed stage's models per replica (`memory` counts them all)

    @property
    def whole(self) -> int:
        return self.units // RESOLUTION if self.units >= RESOLUTION else 0


@dataclass
class Bin:
    """A GPU during packing."""

    node: str
    index: int
    memory: int | None
    free: int = RESOLUTION
    items: list[tuple[Demand, int]] = field(default_factory=list)  # (demand, units here)


def replica_demands(stage: str, facts: StageResources, order: int,
                    replicas: Iterable[int]) -> list[Demand]:
    """The replicas `replicas` (their indices) of one stage, as items to place; `order` is the
    stage's position among the deployments."""
    units = to_units(facts.gpus or 0.0)  # an unknown fraction is never asked to be placed
    return [Demand(stage, index, units, facts.gpu_memory, order, facts.cpus,
                   facts.models_per_replica) for index in replicas]


def decreasing(demands: Iterable[Demand]) -> list[Demand]:
    """Serve's order: GPUs, then CPUs, largest first; stable over deployments and replicas."""
    return sorted(demands, key=lambda d: (-d.units, -d.cpus, d.order, d.replica))


def make_bins(cluster: ClusterSpec) -> list[Bin]:
    return [Bin(node.name, index, node.gpu_memory)
            for node in cluster.nodes for index in range(node.gpus)]


def place(demand: Demand, bins: list[Bin]) -> bool:
    """Place one replica as Serve and Ray would; False when nothing fits."""
    nodes: dict[str, list[Bin]] = {}
    for gpu in bins:
        nodes.setdefault(gpu.node, []).append(gpu)
    fitting = [gpus for gpus in nodes.values() if _fits(demand, gpus)]
    if not fitting:
        return False
    # Serve: a node already holding a replica first, then the least room left (the first on
    # a tie); whole-GPU holes thus stay for wide replicas (3 + 2 + 2 GPUs fit nodes of 4, 3)
    gpus = min(fitting, key=lambda gpus: (all(not gpu.items for gpu in gpus),
                                          sum(gpu.free for gpu in gpus)))
    if demand.whole:
        for gpu in [gpu for gpu in gpus if gpu.free == RESOLUTION][:demand.whole]:
            gpu.free = 0
            gpu.items.append((demand, RESOLUTION))
        return True
    best = min((gpu for gpu in gpus if gpu.free >= demand.units), key=lambda gpu: gpu.free)
    best.free -= demand.units
    best.items.append((demand, demand.units))
    return True


def _fits(demand: Demand, gpus: list[Bin]) -> bool:
    if demand.whole:
        return sum(1 for gpu in gpus if gpu.free == RESOLUTION) >= demand.whole
    return any(gpu.free >= demand.units for gpu in gpus)


def pack(demands: Sequence[Demand], bins: list[Bin], *, grow: Bin | None = None,
         gpus_per_node: int = 1) -> list[Demand]:
    """Best-fit decreasing into `bins` (in place); returns what did not fit. With `grow`, a
    template GPU, nodes of `gpus_per_node` GPUs (or as wide as a whole-GPU replica) are added
    as needed instead."""
    unplaced = []
    for demand in decreasing(demands):
        if place(demand, bins):
            continue
        if grow is None:
            unplaced.append(demand)
            continue
        node = f"{grow.node}{len({gpu.node for gpu in bins})}"
        bins.extend(Bin(node, i, grow.memory)
                    for i in range(max(demand.whole, gpus_per_node, 1)))
        place(demand, bins)
    return unplaced


def gpus_needed(demands: Sequence[Demand], memory: int | None, gpus_per_node: int = 1) -> int:
    """GPUs the demands need on fresh nodes of `gpus_per_node` GPUs each (whole nodes
    counted)."""
    bins: list[Bin] = []
    pack(demands, bins, grow=Bin("node", 0, memory), gpus_per_node=gpus_per_node)
    return len(bins)


def lower_bound(demands: Iterable[Demand], memory: int | None) -> int:
    """ceil(sum of shares): memory over GPU memory where both are known, else fractions."""
    total = 0.0
    for demand in demands:
        if demand.memory is not None and memory:
            total += max(demand.memory / memory, demand.whole)
        else:
            total += demand.units / RESOLUTION
    return math.ceil(total - 1e-9)


def pack_pass(state: CompileState) -> CompileState:
    """Place the replicas each stage starts with; on a cluster spec, fail naming what does not
    fit, and count how far each autoscaled GPU stage can grow (its headroom). Without one, a
    stage whose fraction is unknown (`gpu_memory` only) is left out of the GPUs counted:
    serving such a plan needs a cluster spec (`resources.require_gpu_fractions`)."""
    stages = {name: state.resources[name] for name in state.stage_names()}
    start = [demand for order, (name, facts) in enumerate(stages.items()) if facts.gpus
             for demand in replica_demands(name, facts, order, range(facts.replicas.start))]
    cluster = state.cluster
    if cluster is not None:
        _check_cpus(stages, cluster)
    if not any(facts.gpus for facts in stages.values()):
        return dataclasses.replace(state, layout=None)
    if cluster is None:
        bins: list[Bin] = []
        pack(start, bins, grow=Bin("gpu", 0, None))
        return dataclasses.replace(state, layout=_layout(bins, False, [], start, None))
    bins = make_bins(cluster)
    unplaced = pack(start, bins)
    if unplaced:
        raise _packing_error(unplaced, start, cluster)
    _check_memory(bins, {state.name_of(g): spec_of_group(g).site for g in state.groups})
    return dataclasses.replace(state, layout=_layout(
        bins, True, _headroom(stages, bins), start, cluster.smallest_gpu_memory))


def _layout(bins: list[Bin], bounded: bool, headroom: list[Headroom],
            demands: list[Demand], memory: int | None) -> GpuLayout:
    slots = []
    for gpu in bins:
        replicas = [PlacedReplica(stage=d.stage, replica=d.replica, gpus=units / RESOLUTION,
                                  memory=_memory_here(d, units, gpu.memory))
                    for d, units in gpu.items]
        used = [r.memory for r in replicas]
        slots.append(GpuSlot(
            node=gpu.node, index=gpu.index, memory=gpu.memory, replicas=replicas,
            fraction_used=(RESOLUTION - gpu.free) / RESOLUTION,
            memory_used=None if None in used else sum(m or 0 for m in used)))
    return GpuLayout(bounded=bounded, gpus=slots, headroom=headroom,
                     lower_bound=lower_bound(demands, memory))


def _memory_here(demand: Demand, units: int, gpu_memory: int | None) -> int | None:
    """The memory a replica uses on one GPU: declared (split over a multi-GPU replica's GPUs),
    else its fraction of the GPU."""
    if demand.memory is not None:
        return demand.memory // max(demand.whole, 1)
    return None if gpu_memory is None else gpu_memory * units // RESOLUTION


def _check_memory(bins: list[Bin], sites: Mapping[str, Any]) -> None:
    """Declared fractions on one GPU hold the memory their stages declared."""
    for gpu in bins:
        if gpu.memory is None or len(gpu.items) < 2:
            continue
        used = [(d, _memory_here(d, units, gpu.memory) or 0) for d, units in gpu.items]
        total = sum(memory for _, memory in used)
        if total <= gpu.memory:
            continue
        # the culprit: the declared fraction furthest below its memory
        culprit, _ = max(used, key=lambda dm: dm[1] - gpu.memory * dm[0].units / RESOLUTION)
        other = max((dm for dm in used if dm[0].stage != culprit.stage), key=lambda dm: dm[1],
                    default=next(dm for dm in used if dm[0] is not culprit))
        share = math.ceil((culprit.memory or 0) * 100 / gpu.memory) / 100
        raise PackingError(
            f"num_gpus={culprit.units / RESOLUTION:g} with "
            f"{memory_text(culprit.memory, culprit.models)} does not fit beside stage "
            f"'{other[0].stage}' "
            f"(num_gpus={other[0].units / RESOLUTION:g}, {format_bytes(other[1])}): together "
            f"they need {format_bytes(total)} on {gpu.node} GPU {gpu.index} "
            f"({format_bytes(gpu.memory)})",
            stage=culprit.stage, site=sites[culprit.stage],
            hint=f"raise num_gpus of '{culprit.stage}' to at least {share:g}, or drop num_gpus "
            "and let gpu_memory derive it",
        )


def _packing_error(unplaced: list[Demand], demands: list[Demand],
                   cluster: ClusterSpec) -> PackingError:
    shapes = [n for n in cluster.nodes if n.gpus] or cluster.nodes
    memory = max((n.gpu_memory for n in shapes if n.gpu_memory), default=None)
    # several nodes: whole-GPU replicas need their GPUs on one node, so count in nodes of the
    # cluster's widest shape; one node: count the GPUs that node would need
    widest = max((d.whole for d in demands), default=0) if len(cluster.nodes) > 1 else 0
    per_node = max((n.gpus for n in cluster.nodes), default=0)
    # whole-GPU replicas need their GPUs on one node: count nodes of the cluster's widest shape
    needed = gpus_needed(demands, memory, per_node if widest else 1)
    size = f" of {format_bytes(memory)}" if memory else ""
    counts: dict[str, int] = {}
    for demand in unplaced:
        counts[demand.stage] = counts.get(demand.stage, 0) + 1
    missing = ", ".join(f"{stage} x{count}" for stage, count in counts.items())
    shape = f" (nodes of {max(per_node, widest)})" if widest else ""
    message = (f"cannot place {len(unplaced)} GPU replica(s) ({missing}) on the cluster "
               f"({cluster.describe()}): the plan needs {needed} GPUs{size}{shape}, "
               f"the cluster has {cluster.gpus}")
    if widest > per_node:
        message += f", and a replica needs {widest} GPUs on one node"
    width = max(per_node, widest)
    if widest:
        flags = f"--nodes {needed // width} --gpus-per-node {width}" + (
            f" --gpu-memory {format_bytes(memory)}" if memory else "")
    else:
        flags = f"--gpus {needed}" + (f"x{format_bytes(memory)}" if memory else "")
    return PackingError(
        message, stage=unplaced[0].stage,
        hint=f"give the cluster {needed} GPUs{size}{shape} ({flags}), or lower num_replicas, "
        "num_gpus or gpu_memory",
    )


def _check_cpus(stages: Mapping[str, StageResources], cluster: ClusterSpec) -> None:
    """The replicas placed at deploy time hold no more CPUs than the cluster spec gives."""
    total = cluster.cpus
    if total is None:
        return
    need = {name: facts.cpus * facts.replicas.start for name, facts in stages.items()}
    needed = sum(need.values())
    if needed > total + 1e-9:
        per_stage = ", ".join(f"{name} {facts.replicas.start} x {facts.cpus:g}"
                              for name, facts in stages.items() if facts.cpus)
        raise PackingError(
            f"the replicas need {needed:g} CPUs ({per_stage}), the cluster has {total:g}",
            stage=max(need, key=lambda name: need[name]),
            hint="lower num_cpus or num_replicas, or give the cluster more CPUs (--cpus)",
        )


def _headroom(stages: Mapping[str, StageResources], bins: list[Bin]) -> list[Headroom]:
    """Per autoscaled GPU stage: how many of the replicas it may add fit on the GPUs left."""
    result = []
    for order, (name, facts) in enumerate(stages.items()):
        replicas = facts.replicas
        if not facts.gpus or replicas.max <= replicas.start:
            continue
        spare = [dataclasses.replace(gpu, items=list(gpu.items)) for gpu in bins]
        extra = replica_demands(name, facts, order, range(replicas.start, replicas.max))
        left = pack(extra, spare)
        result.append(Headroom(stage=name, placed=replicas.start, max_replicas=replicas.max,
                               fits=len(extra) - len(left)))
    return result

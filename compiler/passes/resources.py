"""The resources pass: what one replica of each stage reserves, and how many are placed now.

GPU amounts are integers in Ray's own fixed-point unit (1/10000 of a GPU), so sums are exact
and equal what Ray's scheduler adds up. A fraction derived from `gpu_memory` is rounded up onto
a 1/`GRID` grid of the smallest GPU in the cluster spec: it always covers the memory, whichever
GPU Ray puts the replica on, and fractions on one GPU sum to 1 or less exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...dag import DeploymentOptions
from ...errors import CompileError
from ..cluster import ClusterSpec, format_bytes
from .validate import CheckedGraph, spec_of_group

PASS = "resources"
RESOLUTION = 10_000  # Ray's resource unit: FixedPoint keeps 1/10000
GRID = 100           # derived fractions are multiples of 1/GRID of a GPU
AUTO_MAX_REPLICAS = 100  # Serve's max_replicas for num_replicas="auto"


@dataclass(frozen=True)
class StageResources:
    """Per replica: CPUs, GPU units (whole GPUs are multiples of RESOLUTION), GPU memory."""

    stage: str
    site: str
    cpus: float
    gpu_units: int
    gpu_memory: int | None
    derived: bool          # gpu_units came from gpu_memory and the cluster's GPU size
    replicas: int          # placed at deploy time (initial/min when autoscaling)
    max_replicas: int      # at most, when autoscaling

    @property
    def gpus(self) -> float:
        return self.gpu_units / RESOLUTION

    @property
    def whole_gpus(self) -> int:
        """GPUs of a multi-GPU replica (0 for a fraction or none)."""
        return self.gpu_units // RESOLUTION if self.gpu_units >= RESOLUTION else 0


def to_units(gpus: float) -> int:
    return round(gpus * RESOLUTION)


def resources(checked: CheckedGraph, cluster: ClusterSpec | None) -> CheckedGraph:
    table: dict[int, StageResources] = {}
    for group in checked.groups:
        table[id(group)] = _stage_resources(checked, group, cluster)
    return dataclasses.replace(checked, cluster=cluster, resources=table)


def replica_counts(options: DeploymentOptions) -> tuple[int, int]:
    """(placed at deploy time, most autoscaling may start): Serve's defaults included."""
    auto = options.autoscaling_config
    if auto is not None or options.num_replicas == "auto":
        low = 1 if auto is None else auto.min_replicas
        initial = low if auto is None or auto.initial_replicas is None else auto.initial_replicas
        # num_replicas="auto" starts from Serve's AutoscalingConfig.default(): max 100
        explicit = auto is not None and "max_replicas" in auto.model_fields_set
        most = auto.max_replicas if explicit or options.num_replicas != "auto" else \
            AUTO_MAX_REPLICAS
        return initial, max(most, initial)
    count = options.num_replicas if isinstance(options.num_replicas, int) else 1
    return count, count


def _stage_resources(checked: CheckedGraph, group: Any,
                     cluster: ClusterSpec | None) -> StageResources:
    options = checked.options[id(group)]
    spec = spec_of_group(group)
    name = checked.name_of(group)
    actor = options.ray_actor_options
    cpus = 1.0 if actor is None or actor.num_cpus is None else float(actor.num_cpus)
    declared = None if actor is None else actor.num_gpus
    memory = options.gpu_memory
    replicas, most = replica_counts(options)
    common = {"stage": name, "site": str(spec.site), "cpus": cpus, "gpu_memory": memory,
              "replicas": replicas, "max_replicas": most}
    if memory is None or (declared is not None and declared > 0):
        units = to_units(declared or 0.0)
        if memory is not None and cluster is not None:
            _check_fits(name, spec.site, max(units // RESOLUTION, 1), memory, cluster)
        return StageResources(gpu_units=units, derived=False, **common)
    if declared == 0:
        raise CompileError(
            f"gpu_memory={format_bytes(memory)} with num_gpus=0: the stage asks for GPU memory "
            "but no GPU", stage=name, pass_name=PASS, site=spec.site,
            hint="drop num_gpus=0 to let the compiler derive the fraction, or drop gpu_memory",
        )
    size = cluster.smallest_gpu_memory if cluster is not None else None
    if size is None:
        raise CompileError(
            f"gpu_memory={format_bytes(memory)} needs the GPUs' memory size to derive a GPU "
            "fraction, and the cluster spec does not give it" if cluster is not None else
            f"gpu_memory={format_bytes(memory)} needs the GPUs' memory size to derive a GPU "
            "fraction, and no cluster spec was given",
            stage=name, pass_name=PASS, site=spec.site,
            hint="give the GPUs' memory: sg.ClusterSpec(gpus=2, gpu_memory='80GiB') or "
            "sg.detect_cluster(gpu_memory='80GiB') (CLI: --gpus 2x80GiB, or --detect-cluster "
            "--gpu-memory 80GiB; Ray counts GPUs but not their memory), or declare "
            "ray_actor_options={'num_gpus': 0.25}" if cluster is not None else
            "compile with cluster=sg.ClusterSpec(gpus=2, gpu_memory='80GiB') (CLI: "
            "--gpus 2x80GiB), or declare ray_actor_options={'num_gpus': 0.25}",
        )
    if memory > size:
        raise CompileError(
            f"gpu_memory={format_bytes(memory)} is more than one GPU holds "
            f"({format_bytes(size)}, the smallest in the cluster spec)",
            stage=name, pass_name=PASS, site=spec.site,
            hint="give whole GPUs (ray_actor_options={'num_gpus': 2}) for a model split over "
            "several GPUs, or use a cluster with larger GPUs",
        )
    units = -(-memory * GRID // size) * (RESOLUTION // GRID)  # ceil onto the grid
    return StageResources(gpu_units=units, derived=True, **common)


def _check_fits(name: str, site: Any, gpus: int, memory: int, cluster: ClusterSpec) -> None:
    """Declared GPUs (a fraction counts as one GPU) hold the declared memory."""
    size = cluster.smallest_gpu_memory
    if size is not None and memory > gpus * size:
        raise CompileError(
            f"gpu_memory={format_bytes(memory)} does not fit on num_gpus={gpus} GPU"
            f"{'s' if gpus != 1 else ''} of {format_bytes(size)}",
            stage=name, pass_name=PASS, site=site,
            hint=f"raise num_gpus to {-(-memory // size)} or lower gpu_memory",
        )


ResourceTable = Mapping[int, StageResources]

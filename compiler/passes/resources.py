"""The resources pass: each stage's `StageResources`, the one place they are worked out.

How many replicas Serve runs (at deploy time, and the range autoscaling keeps) and what one
reserves, with Serve's own defaults filled in: every later pass and output reads these facts
and none derives them again from the options. GPU amounts are worked in Ray's own fixed-point
unit (1/10000 of a GPU), so sums are exact and equal what Ray's scheduler adds up. A fraction
derived from `gpu_memory` is rounded up onto a 1/`GRID` grid of the smallest GPU in the
cluster spec: it always covers the memory, whichever GPU Ray puts the replica on, and
fractions on one GPU sum to 1 or less exactly.

Without a cluster spec such a fraction is unknown (`StageResources.gpus` is None), not an
error: the plan runs in-process and in tests, where nothing is placed on a GPU (and a fake
stands in for the stage). What places replicas (serving, the Serve config, the RayService)
calls `require_gpu_fractions` first, which fails naming the stage.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...dag import DeploymentOptions, multiplex_spec
from ...errors import CompileError
from ..cluster import ClusterSpec, format_bytes
from ..plan import Plan, ReplicaRange, StageResources
from ..state import CompileState, spec_of_group

PASS = "resources"
RESOLUTION = 10_000  # Ray's resource unit: FixedPoint keeps 1/10000
GRID = 100           # derived fractions are multiples of 1/GRID of a GPU


def to_units(gpus: float) -> int:
    return round(gpus * RESOLUTION)


def resources(state: CompileState, cluster: ClusterSpec | None) -> CompileState:
    table = {}
    for group in state.groups:
        name = state.name_of(group)
        spec = spec_of_group(group)
        loader = None if spec.is_function else multiplex_spec(spec.target)
        models = 1 if loader is None else loader.max_models_per_replica
        table[name] = stage_resources(name, spec.site, state.options[name], cluster,
                                      models=models)
    return dataclasses.replace(state, cluster=cluster, resources=table)


def replica_range(options: DeploymentOptions) -> ReplicaRange:
    """The replicas Serve runs: `num_replicas` (1 when unset), else the autoscaling config it
    runs with (`DeploymentOptions.autoscaling`: Serve's defaults filled in), starting at
    `initial_replicas`, or `min_replicas` when that is unset."""
    auto = options.autoscaling()
    if auto is None:
        count = options.num_replicas if isinstance(options.num_replicas, int) else 1
        return ReplicaRange(start=count, min=count, max=count)
    start = auto.min_replicas if auto.initial_replicas is None else auto.initial_replicas
    return ReplicaRange(start=start, min=auto.min_replicas, max=auto.max_replicas,
                        autoscaling=True)


def stage_resources(name: str, site: Any, options: DeploymentOptions,
                    cluster: ClusterSpec | None, *, models: int = 1) -> StageResources:
    """One stage's facts; `name` and `site` are for the errors. A multiplexed stage holds up
    to `models` models a replica (`sg.multiplexed`), each taking its `gpu_memory`: a replica
    reserves that times `models`, the one figure every later pass reads."""
    actor = options.ray_actor_options
    cpus = 1.0 if actor is None or actor.num_cpus is None else float(actor.num_cpus)
    declared = None if actor is None else actor.num_gpus
    memory = None if options.gpu_memory is None else options.gpu_memory * models
    common = {"replicas": replica_range(options), "cpus": cpus, "gpu_memory": memory,
              "models_per_replica": models}
    if memory is None or (declared is not None and declared > 0):
        units = to_units(declared or 0.0)
        if memory is not None and cluster is not None:
            _check_fits(name, site, max(units // RESOLUTION, 1), memory, cluster, models)
        return StageResources(gpus=units / RESOLUTION, **common)
    units = _derived_units(name, site, memory, declared, cluster, models)
    return StageResources(gpus=None if units is None else units / RESOLUTION,
                          gpus_from_memory=True, **common)


def memory_text(memory: int | None, models: int = 1) -> str:
    """`gpu_memory=6GiB`, or for a multiplexed stage `gpu_memory=2GiB x 3 models`."""
    if models == 1 or memory is None:
        return f"gpu_memory={format_bytes(memory)}"
    return f"gpu_memory={format_bytes(memory // models)} x {models} models"


def _derived_units(name: str, site: Any, memory: int, declared: float | None,
                   cluster: ClusterSpec | None, models: int = 1) -> int | None:
    """The GPU share of `memory` on the smallest GPU of the cluster, rounded up onto the
    grid; None without a cluster spec (unknown until one is given); an error when the
    cluster spec does not give the GPUs' size."""
    if declared == 0:
        raise CompileError(
            f"{memory_text(memory, models)} with num_gpus=0: the stage asks for GPU memory "
            "but no GPU", stage=name, pass_name=PASS, site=site,
            hint="drop num_gpus=0 to let the compiler derive the fraction, or drop gpu_memory",
        )
    if cluster is None:
        return None
    size = cluster.smallest_gpu_memory
    if size is None:
        raise CompileError(
            f"{memory_text(memory, models)} needs the GPUs' memory size to derive a GPU "
            "fraction, and the cluster spec does not give it",
            stage=name, pass_name=PASS, site=site,
            hint="give the GPUs' memory: sg.ClusterSpec(gpus=2, gpu_memory='80GiB') or "
            "sg.detect_cluster(gpu_memory='80GiB') (CLI: --gpus 2x80GiB, or --detect-cluster "
            "--gpu-memory 80GiB; Ray counts GPUs but not their memory), or declare "
            "ray_actor_options={'num_gpus': 0.25}",
        )
    if memory > size:
        raise CompileError(
            f"{memory_text(memory, models)} is more than one GPU holds "
            f"({format_bytes(size)}, the smallest in the cluster spec)",
            stage=name, pass_name=PASS, site=site,
            hint="give whole GPUs (ray_actor_options={'num_gpus': 2}) for a model split over "
            "several GPUs, or use a cluster with larger GPUs",
        )
    return -(-memory * GRID // size) * (RESOLUTION // GRID)  # ceil onto the grid


def _check_fits(name: str, site: Any, gpus: int, memory: int, cluster: ClusterSpec,
                models: int = 1) -> None:
    """Declared GPUs (a fraction counts as one GPU) hold the declared memory."""
    size = cluster.smallest_gpu_memory
    if size is not None and memory > gpus * size:
        raise CompileError(
            f"{memory_text(memory, models)} does not fit on num_gpus={gpus} GPU"
            f"{'s' if gpus != 1 else ''} of {format_bytes(size)}",
            stage=name, pass_name=PASS, site=site,
            hint=f"raise num_gpus to {-(-memory // size)} or lower gpu_memory",
        )


def require_gpu_fractions(plan: Plan, needed_by: str) -> None:
    """Fail, naming the first such stage, when a stage's GPU fraction is unknown (it gives
    `gpu_memory` only and the plan has no cluster spec): what places replicas on GPUs calls
    this first. `needed_by` names that step in the error (`serve`, `serve-config`, ...)."""
    for stage in plan.deployments:
        facts = stage.resources
        if facts.gpus is None:
            raise CompileError(
                f"{memory_text(facts.gpu_memory, facts.models_per_replica)} needs the GPUs' "
                "memory size to "
                "derive a GPU fraction, and no cluster spec was given",
                stage=stage.name, pass_name=needed_by, site=stage.site or None,
                hint=NO_CLUSTER_HINT,
            )


NO_CLUSTER_HINT = (
    "placing replicas on GPUs needs their size: sg.compile(graph, cluster=sg.ClusterSpec("
    "gpus=2, gpu_memory='80GiB')) or sg.serve(graph, cluster=...) (CLI: --gpus 2x80GiB), or "
    "declare ray_actor_options={'num_gpus': 0.25}; running in-process (sg.run_local, "
    "servegraph run --local) and tests that fake the stage need neither")

"""GPU memory in capacity planning: a GPU stage whose profile measured more GPU memory (with
`HEADROOM_PERCENT`) than its share of a GPU holds is given a share that holds it, before
the pass sizes replicas and packing places them, so no replica is planned to run out of GPU
memory.

- a share derived from `gpu_memory`: the planned `gpu_memory` is what was measured times the
  headroom, when that is more than declared (the resources pass derives the fraction again);
- a declared fraction (`num_gpus` below 1): the fraction that holds it on the cluster spec's
  smallest GPU, rounded up onto the resources pass's grid;
- whole GPUs, or a need over one GPU for a fraction: a `CapacityError` naming the stage.

A share is never shrunk: replicas sharing a GPU share its compute too, and the profile, timed
on a whole GPU, cannot tell what a smaller share serves. A multiplexed stage (whose measured
memory depends on how many models the payloads loaded) and a cluster spec without the GPUs'
size are left as declared.
"""

from __future__ import annotations

import dataclasses
import math

from ...errors import CapacityError
from ..cluster import format_bytes
from ..profile import Profile
from ..state import CompileState, spec_of_group
from .resources import GRID, stage_resources

HEADROOM_PERCENT = 120  # a share holds this much of what was measured (allocator growth)


def measured_gpu_memory(profile: Profile, stage: str) -> int | None:
    """The most GPU memory any profiled method of `stage` measured (None: none measured)."""
    found = [each.gpu_memory_bytes for each in profile.methods_of(stage)
             if each.gpu_memory_bytes is not None]
    return max(found) if found else None


def gpu_memory_planned(state: CompileState, profile: Profile
                       ) -> tuple[CompileState, dict[str, int]]:
    """The state with each GPU stage's share raised to hold its measured GPU memory, and the
    memory measured of each stage whose share was checked (see the module docstring)."""
    size = None if state.cluster is None else state.cluster.smallest_gpu_memory
    options, resources = dict(state.options), dict(state.resources)
    measured: dict[str, int] = {}
    for group in state.groups:
        name = state.name_of(group)
        facts = state.resources[name]
        used = measured_gpu_memory(profile, name)
        if used is None or not facts.uses_gpu or facts.models_per_replica > 1 or size is None:
            continue
        measured[name] = used
        need = -(-used * HEADROOM_PERCENT // 100)
        site = spec_of_group(group).site
        own = options[name]
        if facts.gpus_from_memory:
            if need > size:
                raise _over_one_gpu(name, site, used, need, size)
            if need <= (own.gpu_memory or 0):
                continue
            own = own.model_copy(update={"gpu_memory": need})
        else:
            gpus = facts.gpus or 0.0
            if gpus >= 1:
                if need > math.floor(gpus) * size:
                    raise _over_whole_gpus(name, site, used, need, gpus, size)
                continue
            if need > size:
                raise _over_one_gpu(name, site, used, need, size)
            if need <= gpus * size:
                continue
            actor = own.ray_actor_options
            assert actor is not None  # a declared fraction
            own = own.model_copy(update={"ray_actor_options": actor.model_copy(
                update={"num_gpus": -(-need * GRID // size) / GRID})})
        options[name] = own
        resources[name] = stage_resources(name, site, own, state.cluster,
                                          models=facts.models_per_replica)
    return dataclasses.replace(state, options=options, resources=resources), measured


def _over_one_gpu(name: str, site: object, used: int, need: int, size: int) -> CapacityError:
    return CapacityError(
        f"the profile measured {format_bytes(used)} of GPU memory in a replica; with "
        f"{HEADROOM_PERCENT - 100}% headroom that is {format_bytes(need)}, more than one GPU "
        f"holds ({format_bytes(size)}, the smallest in the cluster spec)",
        stage=name, site=site,
        hint="give the stage whole GPUs (ray_actor_options={'num_gpus': 2}) for a model "
        "split over several, or a cluster with larger GPUs")


def _over_whole_gpus(name: str, site: object, used: int, need: int, gpus: float,
                     size: int) -> CapacityError:
    whole = math.floor(gpus)
    return CapacityError(
        f"the profile measured {format_bytes(used)} of GPU memory in a replica; with "
        f"{HEADROOM_PERCENT - 100}% headroom that is {format_bytes(need)}, more than its "
        f"{whole} GPU{'s' if whole != 1 else ''} of {format_bytes(size)} "
        f"hold{'' if whole != 1 else 's'} (num_gpus={gpus:g})",
        stage=name, site=site,
        hint=f"raise num_gpus to {-(-need // size)}, or use a cluster with larger GPUs")

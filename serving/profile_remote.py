"""`sg.profile(..., address=...)`: the stages measured on a node of a Ray cluster, where the
replicas will run, instead of on this machine. The measuring is `serving.profile`'s, run as
one Ray task that holds the CPUs it sweeps threads over (default: the largest node's), so
nothing Ray schedules shares them meanwhile; the task prints its progress, which Ray brings
to this terminal, and returns the profile as JSON. Stage classes are imported on the node by
module name, as Serve's replicas import them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import ray

from ..compiler import CompiledPipeline
from ..compiler.profile import Profile
from ..errors import PipelineError
from .admin import connect

PLACE_TIMEOUT_S = 120.0  # how long the task may wait for a node with the CPUs free


Measure = Callable[..., Profile]  # serving.profile.profile, run in the task


def profile_on_cluster(plan: CompiledPipeline, payloads: list[Any], *, budget_s: float,
                       address: str, cpus: int | None, progress: Any,
                       measure: Measure) -> Profile:
    """The profile `measure` takes, run by a Ray task on the cluster at `address` (see the
    module)."""
    try:
        connect(address, quiet=progress is None)
    except ConnectionError as exc:
        raise PipelineError(f"cannot profile on the Ray cluster at {address}: {exc}") from exc
    largest = largest_node_cpus()
    cpus = cpus or largest
    if cpus > largest:
        raise PipelineError(f"cannot profile on {cpus} CPUs: the cluster's largest node has "
                            f"{largest} (profile with cpus={largest} or fewer)")
    task = ray.remote(num_cpus=cpus, max_retries=0)(_measure)
    ref = task.remote(measure, plan, payloads, budget_s, cpus, progress is not None)
    ready, _ = ray.wait([ref], timeout=budget_s + PLACE_TIMEOUT_S)
    if not ready:
        ray.cancel(ref, force=True)
        raise PipelineError(
            f"profiling on the cluster did not finish within {budget_s + PLACE_TIMEOUT_S:g} s: "
            f"no node had {cpus} CPUs free for it, or the stages took longer than the budget "
            "(free CPUs on a node, or profile with fewer: cpus=...)")
    try:
        return Profile.model_validate_json(ray.get(ref))
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        raise cause if isinstance(cause, PipelineError) else PipelineError(
            f"profiling on the cluster failed: {exc}") from exc


def largest_node_cpus() -> int:
    """The CPUs of the cluster's largest alive node."""
    sizes = [int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"]]
    return max(sizes, default=0) or 1


def _measure(measure: Measure, plan: CompiledPipeline, payloads: list[Any], budget_s: float,
             cpus: int, verbose: bool) -> str:
    """On the node: `measure` (the in-process profile) in this task's process, over its
    CPUs."""

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    found = measure(plan, payloads, budget_s=budget_s, cpus=cpus,
                    progress=say if verbose else None)
    return found.model_dump_json()

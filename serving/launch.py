"""Deploying a plan on Ray Serve: an embedded local Ray unless `RAY_ADDRESS` names one, sized
and checked so that every replica fits, then `serve.run` of the plan's application.
"""

from __future__ import annotations

import os

import ray
from ray import serve

from ..compiler import CompiledPipeline, StagePlan, as_plan
from ..dag import Graph
from ..errors import DeployError
from ..executors.ray.ray_private import http_url
from .app import bind_app
from .env import EMBEDDED_ENV
from .handle import PipelineHandle


def serve_pipeline(graph_or_plan: Graph | CompiledPipeline, *, name: str | None = None,
                   route_prefix: str | None = None, http_port: int | None = None,
                   diagram_svg: bytes | None = None) -> PipelineHandle:
    """Deploy on Ray Serve. Connects to `RAY_ADDRESS` when set, else starts an embedded local
    Ray sized to hold the plan's replicas; returns once every deployment is running.
    `diagram_svg`, rendered by the caller, is served at `GET <route>/-/graph.svg`."""
    plan = as_plan(graph_or_plan)
    ensure_ray(plan)
    check_fits(plan, ray.cluster_resources())
    if http_port is not None:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    name = name or plan.name
    route_prefix = route_prefix or f"/{plan.name}"
    handle = serve.run(bind_app(plan, diagram_svg), name=name, route_prefix=route_prefix)
    return PipelineHandle(handle, name, route_prefix, http_url(route_prefix))


# Logical CPUs of an embedded Ray: Serve reserves one per replica by default, and a laptop
# serving a few pipelines side by side must not leave replicas pending for want of a logical
# core. Logical CPUs only gate scheduling; processes share the real cores either way.
EMBEDDED_MIN_CPUS = 16


def ensure_ray(plan: CompiledPipeline) -> None:
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    # the Serve controller this Ray starts places replicas as the pack pass planned them, and
    # runs its replicas in Serve's throughput-optimised mode; its proxies answer a request
    # whose ingress replica died with a 502 naming it (see `env`)
    for name, value in EMBEDDED_ENV.items():
        os.environ.setdefault(name, value)
    # address="local": a new embedded Ray even when `ray start` left a cluster on this machine
    ray.init(address="local",
             num_cpus=max(EMBEDDED_MIN_CPUS, os.cpu_count() or 1, cpus_needed(plan)),
             include_dashboard=False)


def cpus_needed(plan: CompiledPipeline) -> int:
    """Logical CPUs for every replica the plan may run (autoscaling at `max_replicas`)."""
    return int(resources_needed(plan, at_most=True)["CPU"] + 0.999)


def resources_needed(plan: CompiledPipeline, *, at_most: bool = False) -> dict[str, float]:
    """CPUs and GPUs the plan's replicas reserve: the replicas `serve.run` waits for (each
    stage's start), or (`at_most`) the most autoscaling may start."""
    needed = {"CPU": 0.0, "GPU": 0.0}
    for stage in [*plan.served(), plan.driver]:
        replicas = stage.resources.replicas
        for resource in needed:
            needed[resource] += (replicas.max if at_most else replicas.start) * _per_replica(
                stage, resource)
    return needed


def check_fits(plan: CompiledPipeline, cluster: dict[str, float]) -> None:
    """Fail now, naming the shortfall, rather than let `serve.run` wait forever for replicas
    that the cluster cannot hold."""
    for resource, amount in resources_needed(plan).items():
        available = cluster.get(resource, 0.0)
        if amount <= available + 1e-9:
            continue
        option = _OPTION[resource]
        per_stage = ", ".join(
            f"{stage.name} {stage.resources.replicas.start} x {each:g}"
            for stage in plan.served() if (each := _per_replica(stage, resource)))
        raise DeployError(
            f"pipeline {plan.name!r} needs {amount:g} {resource} for its replicas ({per_stage}), "
            f"but the Ray cluster has {available:g}; lower num_replicas or {option}, or give "
            f"Ray more (ray.init({option}=...))")


_OPTION = {"CPU": "num_cpus", "GPU": "num_gpus"}


def _per_replica(stage: StagePlan, resource: str) -> float:
    return stage.resources.cpus if resource == "CPU" else stage.resources.gpus

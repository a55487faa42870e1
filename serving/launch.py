"""Deploying a plan on Ray Serve: an embedded local Ray unless `RAY_ADDRESS` names one, sized
and checked so that every replica fits, then `serve.run` of the plan's application.

The embedded Ray is servegraph's own: started with its switches (`env`) in the environment,
logical CPUs for every replica, and, when the plan has a cluster spec, that cluster's GPUs as
logical GPUs (scheduling needs no real GPU, as in the test session). A Ray that was running
already (this process's own `ray.init`, or `RAY_ADDRESS`) is used as it is; when servegraph's
switches were missing from this process's environment, which a Ray started from it inherits,
a `RuntimeWarning` says what that Ray runs without.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import ray
from ray import serve

from ..compiler import CompiledPipeline, StagePlan, as_plan
from ..compiler.app import CompiledApp
from ..compiler.cluster import format_bytes
from ..compiler.emit.proto import GRPC_SERVICER
from ..compiler.emit.serve_config import grpc_options
from ..compiler.passes.resources import require_gpu_fractions
from ..dag import Graph
from ..errors import DeployError
from ..executors.ray.ray_private import PRIVATE_NAMES, http_url, read
from .admin import connect
from .app import bind_app, bind_front
from .apphandle import AppHandle
from .env import EMBEDDED_ENV, PROXY_ENV, SERVE_ENV
from .handle import PipelineHandle
from .ship import front_code, ship_stage_code


def serve_pipeline(graph_or_plan: Graph | CompiledPipeline, *, name: str | None = None,
                   route_prefix: str | None = None, http_port: int | None = None,
                   diagram_svg: bytes | None = None,
                   logging_config: dict[str, Any] | None = None,
                   grpc_port: int | None = None,
                   dashboard: bool = False) -> PipelineHandle:
    """Deploy on Ray Serve. Connects to `RAY_ADDRESS` when set, else starts an embedded local
    Ray sized to hold the plan's replicas; returns once every deployment is running.
    `diagram_svg`, rendered by the caller, is served at `GET <route>/-/graph.svg`;
    `logging_config` (Serve's) applies to each deployment that sets none of its own;
    `grpc_port`: Serve's gRPC proxy serves the graph's service there (`plan.to_proto()`);
    `dashboard`: an embedded Ray started here runs Ray's dashboard."""
    plan = as_plan(graph_or_plan)
    prepare(plan, [plan], http_port, grpc_port=grpc_port, dashboard=dashboard)
    name = name or plan.name
    route_prefix = route_prefix or f"/{plan.name}"
    handle = serve.run(bind_app(plan, diagram_svg), name=name, route_prefix=route_prefix,
                       logging_config=logging_config)
    return PipelineHandle(handle, name, route_prefix, http_url(route_prefix), plan=plan)


def serve_front(plan: CompiledApp, *, name: str | None = None, route_prefix: str = "/",
                http_port: int | None = None, diagrams: dict[str, bytes | None] | None = None,
                logging_config: dict[str, Any] | None = None,
                grpc_port: int | None = None, dashboard: bool = False) -> AppHandle:
    """Deploy an `sg.App` as one Serve application (see `serve_pipeline`), its routes below
    `route_prefix`; `diagrams` are each graph's SVG by name; `grpc_port`: Serve's gRPC proxy
    serves each graph's service there too (`plan.to_proto()`)."""
    prepare(plan, list(plan.plans.values()), http_port, extra=front_code(plan.front),
            grpc_port=grpc_port, dashboard=dashboard)
    name = name or plan.name
    handle = serve.run(bind_front(plan, diagrams or {}), name=name, route_prefix=route_prefix,
                       logging_config=logging_config)
    return AppHandle(handle, plan, name, route_prefix, http_url(route_prefix))


def prepare(plan: CompiledPipeline | CompiledApp, graphs: list[CompiledPipeline],
            http_port: int | None, extra: list[Any] | None = None,
            grpc_port: int | None = None, dashboard: bool = False) -> None:
    """Everything before `serve.run`: GPU fractions known, Ray up and big enough (an embedded
    one with its dashboard when `dashboard`), the stage code (and `extra` objects' modules)
    able to reach the replicas, Serve on `http_port`."""
    for graph in graphs:
        require_gpu_fractions(graph, "serve")
    ensure_ray(plan, dashboard=dashboard)
    check_fits(plan, ray.cluster_resources())
    for graph in graphs:  # stages from a test module or a script reach the replicas by value
        ship_stage_code(graph, extra)
    if http_port is not None or grpc_port is not None:
        serve.start(http_options=None if http_port is None else
                    {"host": "127.0.0.1", "port": http_port},
                    grpc_options=None if grpc_port is None else grpc_options(grpc_port))
    if grpc_port is not None:
        require_grpc(grpc_port)


def serve_grpc_port() -> int | None:
    """The port where the Serve this process is connected to serves servegraph's gRPC
    services (None: no Serve, or its gRPC proxy lacks servegraph's servicer)."""
    client = read(*PRIVATE_NAMES[1])(raise_if_no_controller_running=False) \
        if ray.is_initialized() else None
    options = (client.get_serve_details().get("grpc_options") or {}) if client else {}
    served = GRPC_SERVICER in (options.get("grpc_servicer_functions") or [])
    return int(options["port"]) if served and options.get("port") else None


def require_grpc(port: int) -> None:
    """Serve's gRPC options are fixed when Serve starts: a `DeployError` when the Serve this
    process talks to does not serve servegraph's gRPC on `port`."""
    running = serve_grpc_port()
    if running != port:
        now = "no servegraph gRPC" if running is None else f"servegraph's gRPC on {running}"
        raise DeployError(
            f"gRPC on port {port} was asked for, but the running Serve has {now}; Serve reads "
            "its gRPC options only when it starts: serve.shutdown() first, or pass the port "
            "Serve has")


# Logical CPUs of an embedded Ray: Serve reserves one per replica by default, and a laptop
# serving a few pipelines side by side must not leave replicas pending for want of a logical
# core. Logical CPUs only gate scheduling; processes share the real cores either way.
EMBEDDED_MIN_CPUS = 16


# what a Ray started without each of servegraph's switches runs without (see `env`)
LOST_WITHOUT = {
    **{name: "Serve's pack scheduling, which the plan's GPU layout assumes (replicas may "
       "land on other GPUs than planned, or stay pending)" for name in SERVE_ENV},
    **{name: "the proxy middleware that answers a request whose driver replica died with a "
       "JSON 502 naming it" for name in PROXY_ENV},
}


def ensure_ray(plan: CompiledPipeline | CompiledApp, *,
               dashboard: bool = False) -> str | None:
    """Use the Ray this process runs or `RAY_ADDRESS` names (warning when servegraph's switches
    were not set for it), else start the embedded one (see the module docstring), with Ray's
    dashboard when `dashboard` is set. Returns the dashboard's URL when one started here:
    Ray tells it only to the `ray.init` that starts it."""
    address = os.environ.get("RAY_ADDRESS")
    if ray.is_initialized() or address:
        warn_missing_switches(plan, "was running already" if ray.is_initialized() else
                              f"is the cluster at RAY_ADDRESS={address}")
        if not ray.is_initialized():
            connect(address, quiet=False)  # a cluster that wants a token says so at once
        return None
    # the Serve controller this Ray starts places replicas as the pack pass planned them, and
    # runs its replicas in Serve's throughput-optimised mode; its proxies answer a request
    # whose ingress replica died with a 502 naming it (see `env`)
    for name, value in EMBEDDED_ENV.items():
        os.environ.setdefault(name, value)
    # address="local": a new embedded Ray even when `ray start` left a cluster on this machine;
    # num_gpus None: the GPUs Ray finds on this machine
    # the dashboard takes port 8265, or the next free one when another Ray holds it
    context = ray.init(address="local",
                       num_cpus=max(EMBEDDED_MIN_CPUS, os.cpu_count() or 1, cpus_needed(plan)),
                       num_gpus=None if plan.cluster is None else plan.cluster.gpus,
                       include_dashboard=dashboard)
    url = context.dashboard_url if dashboard else None
    return None if not url else url if "://" in url else f"http://{url}"


def warn_missing_switches(plan: CompiledPipeline | CompiledApp, which: str) -> None:
    """A `RuntimeWarning` naming what a Ray servegraph did not start runs without: the
    switches in `LOST_WITHOUT` missing from this process's environment (a Ray started from it
    inherited it; for a cluster started elsewhere it is the best evidence this process has)."""
    missing = [name for name in LOST_WITHOUT if name not in os.environ]
    if not missing:
        return
    lost = "; ".join(f"{LOST_WITHOUT[name]} ({name})" for name in missing)
    exports = " ".join(f"{name}={(SERVE_ENV | PROXY_ENV)[name]}" for name in missing)
    warnings.warn(
        f"servegraph serves {plan.name!r} on a Ray that {which}, started without servegraph's "
        f"switches in the environment, so it runs without {lost}. Ray reads them only when it "
        "starts: let servegraph start Ray (no ray.init of your own; give sg.serve cluster=... "
        "or the CLI --gpus for GPUs), or set them before ray.init / `ray start`: "
        f"{exports}", RuntimeWarning, stacklevel=5)


def cpus_needed(plan: CompiledPipeline | CompiledApp) -> int:
    """Logical CPUs for every replica the plan may run (autoscaling at `max_replicas`)."""
    return int(resources_needed(plan, at_most=True)["CPU"] + 0.999)


def resources_needed(plan: CompiledPipeline | CompiledApp, *,
                     at_most: bool = False) -> dict[str, float]:
    """CPUs and GPUs the plan's replicas reserve: the replicas `serve.run` waits for (each
    stage's start), or (`at_most`) the most autoscaling may start."""
    needed = {"CPU": 0.0, "GPU": 0.0}
    for stage in [*plan.served(), plan.driver]:
        replicas = stage.resources.replicas
        for resource in needed:
            needed[resource] += (replicas.max if at_most else replicas.start) * _per_replica(
                stage, resource)
    return needed


def check_fits(plan: CompiledPipeline | CompiledApp, cluster: dict[str, float]) -> None:
    """Fail now, naming the shortfall, rather than let `serve.run` wait forever for replicas
    that the cluster cannot hold."""
    for resource, amount in resources_needed(plan).items():
        available = cluster.get(resource, 0.0)
        if amount <= available + 1e-9:
            continue
        option = _OPTION[resource]
        per_stage = ", ".join(
            f"{stage.name} {stage.resources.replicas.start} x {each:g}"
            for stage in [*plan.served(), plan.driver] if (each := _per_replica(stage, resource)))
        more = _more_gpus(plan, amount) if resource == "GPU" else \
            f"give Ray more (ray.init({option}=...))"
        raise DeployError(
            f"pipeline {plan.name!r} needs {amount:g} {resource} for its replicas ({per_stage}), "
            f"but the Ray cluster has {available:g}; lower num_replicas or {option}, or {more}")


_OPTION = {"CPU": "num_cpus", "GPU": "num_gpus"}


def _more_gpus(plan: CompiledPipeline | CompiledApp, amount: float) -> str:
    """How to give Ray the GPUs a plan needs: a cluster spec (servegraph's embedded Ray gets
    its GPUs, logical ones on a machine without), or a Ray of one's own started with more."""
    cluster = plan.cluster
    count = cluster.gpus if cluster is not None and cluster.gpus else max(
        math.ceil(amount - 1e-9), plan.gpu_layout.used if plan.gpu_layout else 0)
    memory = cluster.smallest_gpu_memory if cluster is not None else None
    flag = f"{count}x{format_bytes(memory)}" if memory else str(count)
    spec = f"gpus={count}" + (f", gpu_memory='{format_bytes(memory)}'" if memory else "")
    return (f"serve it for a cluster spec: servegraph's embedded Ray gets its GPUs (logical "
            f"ones: none need exist) (CLI: servegraph run MODULE:ATTR --gpus {flag}; Python: "
            f"sg.serve(graph, cluster=sg.ClusterSpec({spec}))). A Ray that was running already "
            f"(your ray.init, or RAY_ADDRESS) keeps the GPUs it started with: start it with "
            f"ray.init(num_gpus={count}) or ray start --num-gpus={count}, servegraph's switches "
            "(servegraph.serving.env) set first")


def _per_replica(stage: StagePlan, resource: str) -> float:
    """What one replica reserves (a GPU fraction unknown is refused before this is read)."""
    return stage.resources.cpus if resource == "CPU" else stage.resources.gpus or 0.0

"""A plan as a `serve deploy` config: Ray Serve's multi-application YAML schema.

The application's `import_path` is servegraph's application builder, which imports the graph
from its module path (`args.graph`), compiles it again for the same cluster spec and builds
the Serve application; the deployments are listed with their compiled options so operators
override replicas or resources in YAML as they would for hand-written Serve.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ...errors import CompileError
from ..appplan import AppPlan
from ..passes.resources import require_gpu_fractions
from ..plan import Plan, StagePlan
from .proto import GRPC_SERVICER

APP_BUILDER = "servegraph.serving.app:app_builder"

# DeploymentSchema's fields in Ray 2.60: what a config may set per deployment.
DEPLOYMENT_FIELDS = (
    "name", "num_replicas", "max_ongoing_requests", "max_queued_requests",
    "backpressure_config", "user_config", "autoscaling_config", "graceful_shutdown_wait_loop_s",
    "graceful_shutdown_timeout_s", "health_check_period_s", "health_check_timeout_s",
    "ray_actor_options", "placement_group_bundles", "placement_group_strategy",
    "placement_group_bundle_label_selector", "max_replicas_per_node", "logging_config",
    "request_router_config", "gang_scheduling_config", "deployment_actors",
    "rolling_update_percentage", "max_surge_percent",
)


def find_graph_path(graph: Any) -> str | None:
    """`module:attr` of a module-level variable holding `graph` (or an `sg.App`), if one does
    (not __main__): the module the object was made in, when it is one of them (a test module
    importing a graph holds it too)."""
    found: list[tuple[str, str]] = []
    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None:
            continue
        try:
            namespace = vars(module)
        except TypeError:
            continue
        found += [(f"{name}:{attr}", getattr(module, "__file__", None) or "")
                  for attr, value in list(namespace.items())
                  if value is graph and not attr.startswith("_")]
    site = getattr(graph, "site", None)
    made_in = os.path.normpath(site.file) if site is not None else None
    home = [path for path, file in found
            if made_in and file and os.path.normpath(file).endswith(made_in)]
    return (home or [path for path, _ in found] or [None])[0]


def app_config(plan: Plan, graph: str | None = None, *,
                name: str | None = None, route_prefix: str | None = None,
                runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
    """One entry of the config's `applications` list."""
    require_gpu_fractions(plan, "serve-config")
    source = graph or find_graph_path(plan.memory.graph)
    if source is None:
        raise CompileError(
            f"cannot tell which module holds the graph {plan.name!r}, so a Serve config "
            "cannot import it", pass_name="serve-config",
            hint="keep the graph in a module-level variable and pass graph='package.module:attr'"
            " (the CLI passes its MODULE:ATTR)",
        )
    args: dict[str, Any] = {"graph": source}
    if plan.cluster is not None:
        args["cluster"] = plan.cluster.model_dump(mode="json")
    if not plan.fuse:  # the builder compiles the graph again: without fusion, as this plan
        args["fuse"] = False
    app: dict[str, Any] = {
        "name": name or plan.name,
        "route_prefix": route_prefix or f"/{plan.name}",
        "import_path": APP_BUILDER,
        "args": args,
    }
    if runtime_env:
        app["runtime_env"] = runtime_env
    app["deployments"] = deployment_entries([*plan.served(), plan.driver])
    return app


def deployment_entries(stages: list[StagePlan]) -> list[dict[str, Any]]:
    """The config's deployments: each stage's compiled options, in Serve's names."""
    entries = []
    for stage in stages:
        options = dict(stage.options)
        replicas = stage.resources.replicas
        if replicas.autoscaling:  # the range Serve will use, shown (its defaults filled in)
            options["autoscaling_config"] = (options.get("autoscaling_config") or {}) | {
                "min_replicas": replicas.min, "max_replicas": replicas.max}
        entries.append({"name": stage.name}
                       | {key: options[key] for key in DEPLOYMENT_FIELDS if key in options})
    return entries


def app_entry(plan: AppPlan, source: str | None = None, *, name: str | None = None,
              route_prefix: str | None = None,
              runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config's entry for an `sg.App`: its builder imports the app (`args.app`) and
    compiles its graphs again, for the same cluster and fusion; one application, its
    deployments the union of the graphs' (a shared stage once) and the ingress."""
    for graph in plan.plans.values():
        require_gpu_fractions(graph, "serve-config")
    source = source or find_graph_path(plan.source)
    if source is None:
        raise CompileError(
            f"cannot tell which module holds the app {plan.name!r}, so a Serve config "
            "cannot import it", pass_name="serve-config",
            hint="keep the sg.App in a module-level variable and pass app='package.module:attr'"
            " (the CLI passes its MODULE:ATTR)")
    args: dict[str, Any] = {"app": source}
    if plan.cluster is not None:
        args["cluster"] = plan.cluster.model_dump(mode="json")
    if not plan.fuse:
        args["fuse"] = False
    entry: dict[str, Any] = {"name": name or plan.name, "route_prefix": route_prefix or "/",
                             "import_path": APP_BUILDER, "args": args}
    if runtime_env:
        entry["runtime_env"] = runtime_env
    entry["deployments"] = deployment_entries([*plan.served(), plan.driver])
    return entry


def serve_config(plans: list[Plan | AppPlan] | Plan | AppPlan, *,
                 graphs: list[str | None] | None = None, host: str = "0.0.0.0",
                 port: int = 8000, runtime_env: dict[str, Any] | None = None,
                 grpc_port: int | None = None) -> dict[str, Any]:
    """A Serve config (`ServeDeploySchema`) holding one application per plan (an `sg.App`'s
    plan is one application); `graphs`: each one's `module:attr`. With `grpc_port`, Serve's
    gRPC proxy listens there with servegraph's servicer (`grpc_options`, see `proto`)."""
    plans = [plans] if isinstance(plans, (Plan, AppPlan)) else list(plans)
    graphs = graphs or [None] * len(plans)
    apps = [app_entry(plan, graph, runtime_env=runtime_env) if isinstance(plan, AppPlan)
            else app_config(plan, graph, runtime_env=runtime_env)
            for plan, graph in zip(plans, graphs, strict=True)]
    for key in ("name", "route_prefix"):
        seen = [app[key] for app in apps]
        if len(set(seen)) != len(seen):
            raise CompileError(f"two applications share the {key} {seen}",
                               pass_name="serve-config",
                               hint="give each graph its own name: sg.Graph(out, name='...')")
    config: dict[str, Any] = {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
    }
    if grpc_port is not None:
        config["grpc_options"] = grpc_options(grpc_port)
    return config | {"applications": apps}


def grpc_options(port: int) -> dict[str, Any]:
    """Serve's `grpc_options` serving every servegraph graph's gRPC service on `port` (the
    servicer routes by method path, so it needs no graph named here)."""
    return {"port": port, "grpc_servicer_functions": [GRPC_SERVICER]}

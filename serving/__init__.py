"""`sg.serve`: deploy a pipeline on Ray Serve with its own diagram; `sg.connect`: a handle to
one deployed earlier.

The package holds everything that runs a plan on Ray from the outside: the application
builder (`app`), launching (`launch`: the embedded Ray, `check_fits`), stage code sent by
value (`ship`), the client (`handle.PipelineHandle`), the test session's Ray (`session`),
cluster detection (`cluster`) and Serve's environment switches (`env`). `serving` renders the
diagram and hands the driver the bytes, so `executors/` and `web/` never import `visualize/`.
"""

from __future__ import annotations

import os
from typing import Any

from ..compiler import ClusterSpec, CompiledPipeline, as_plan, compile
from ..compiler.app import CompiledApp
from ..dag import Graph
from ..dag.app import App
from ..errors import DeployError
from . import admin
from .app import diagram_svg, graph_diagrams
from .apphandle import AppHandle, attach
from .handle import PipelineHandle
from .launch import serve_front, serve_pipeline


def serve(graph_or_plan: Graph | CompiledPipeline | App | CompiledApp, *,
          name: str | None = None, route_prefix: str | None = None,
          http_port: int | None = None, cluster: ClusterSpec | None = None,
          logging_config: dict[str, Any] | None = None,
          grpc_port: int | None = None, dashboard: bool = False
          ) -> PipelineHandle | AppHandle:
    """Deploy on Ray Serve (embedded local Ray unless `RAY_ADDRESS` is set); see
    `serving.launch.serve_pipeline`. A graph is compiled for `cluster` (its GPU stages packed
    onto it); a plan was packed when it was compiled, so a `cluster` given with one must be
    the plan's own. An embedded Ray started here has the plan's cluster's GPUs (logical ones:
    none need exist). `logging_config` is Serve's, for each deployment of the application
    that sets none of its own (e.g. `{"log_level": "WARNING", "enable_access_log": False}`).
    `grpc_port`: Serve's gRPC proxy serves the graph's gRPC service there too (its `.proto`:
    `plan.to_proto()`); fixed when Serve starts, so a Serve running already must have it.
    `dashboard`: an embedded Ray started here runs Ray's dashboard too (Ray logs its URL;
    `servegraph run` turns it on and prints it); a Ray running already keeps what it has.
    An `sg.App` (or its compiled plan) is one application, its routes below `route_prefix`
    (default `/`), answered with an `AppHandle`. Returns once every deployment is running."""
    if isinstance(graph_or_plan, (App, CompiledApp)):
        app = graph_or_plan if isinstance(graph_or_plan, CompiledApp) else compile(
            graph_or_plan, cluster=cluster)
        _same_cluster(app, cluster)
        return serve_front(app, name=name, route_prefix=route_prefix or "/",
                           http_port=http_port, diagrams=graph_diagrams(app),
                           logging_config=logging_config, grpc_port=grpc_port,
                           dashboard=dashboard)
    if cluster is not None and isinstance(graph_or_plan, Graph):
        plan = compile(graph_or_plan, cluster=cluster)
    else:
        plan = as_plan(graph_or_plan)
    _same_cluster(plan, cluster)
    return serve_pipeline(plan, name=name, route_prefix=route_prefix, http_port=http_port,
                          diagram_svg=diagram_svg(plan), logging_config=logging_config,
                          grpc_port=grpc_port, dashboard=dashboard)


def _same_cluster(plan: CompiledPipeline | CompiledApp, cluster: ClusterSpec | None) -> None:
    if cluster is not None and plan.cluster != cluster:
        packed = plan.cluster.describe() if plan.cluster is not None else "no cluster spec"
        raise DeployError(
            f"sg.serve got the plan {plan.name!r}, compiled for {packed}, with cluster="
            f"{cluster.describe()}; pass the graph to compile it for that cluster, or "
            f"sg.compile(graph, cluster=...) and serve that plan without cluster=")


def connect(name: str, *, address: str | None = None, timeout_s: float = 60.0
            ) -> PipelineHandle | AppHandle:
    """A handle to the servegraph application `name` deployed earlier (by `sg.serve`,
    `servegraph deploy`, `serve deploy`, or another process), with the plan its driver serves
    (`handle.plan`). Joins the Ray cluster at `address` (else `RAY_ADDRESS`) unless this
    process is connected already. Raises DeployError naming the running applications when
    `name` is not one of them or there is no cluster to join."""
    if not admin.is_connected():
        address = address or os.environ.get("RAY_ADDRESS")
        if not address:
            raise DeployError(
                f"sg.connect({name!r}): no Ray cluster to find it on: pass address= (e.g. "
                "'127.0.0.1:6379'), set RAY_ADDRESS, or call it where ray.init ran")
        try:
            admin.connect(address)
        except ConnectionError as exc:
            raise DeployError(f"sg.connect({name!r}): cannot join the Ray cluster at "
                              f"{address}: {exc}") from exc
    return attach(name, timeout_s=timeout_s)


__all__ = ["AppHandle", "PipelineHandle", "connect", "serve"]

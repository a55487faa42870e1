"""The verbs that serve a graph or operate a running one: `run` (here, until Ctrl-C), `deploy`
(onto a running cluster, and return), `status` and `shutdown`. Ray is reached through
`serving` only, imported inside the verb that needs it."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from typing import TYPE_CHECKING, Any

from ..compiler.app import CompiledApp
from ..dag.loader import load_target
from .common import UsageError, cluster_of, connect, waiting

if TYPE_CHECKING:
    from ..compiler import CompiledPipeline
    from ..serving import AppHandle, PipelineHandle


def cmd_run(args: argparse.Namespace) -> int:
    from ..compiler import compile

    graph = load_target(args.target)
    if args.local:
        return run_local(compile(graph, cluster=cluster_of(args)), args)
    stop_signals = StopSignals()  # before `--detect-cluster` connects
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address
    plan = compile(graph, cluster=cluster_of(args))
    require_fractions(plan)  # before Ray starts, as a packing error is
    dashboard = None
    if os.environ.get("RAY_ADDRESS"):
        connect(None, quiet=False)  # a cluster that cannot be joined is one line, at once
    else:
        if args.access_log:
            show_replica_logs()
        dashboard = start_ray(plan, dashboard=args.dashboard)
    handle = deploy(plan, args)
    stop_signals.catch()  # again: a Ray driver takes SIGTERM for its crash report
    print(plan.explain())
    if dashboard:
        print(f"Ray dashboard: {dashboard}")
    print(f"serving {handle.name!r}: {doors(plan, handle.url)} (Ctrl-C stops)", flush=True)
    try:
        stop_signals.wait()
    finally:
        stop(handle)
    return 0


def start_ray(plan: CompiledPipeline | CompiledApp, *, dashboard: bool) -> str | None:
    """`run` on an embedded Ray: start it before deploying, with Ray's dashboard unless
    `--no-dashboard`, since Ray gives the dashboard's URL only to the call that starts it.
    Returns that URL (None without a dashboard, or when `--detect-cluster` joined a Ray)."""
    from ..serving.launch import ensure_ray

    with waiting("starting Ray" + (" and its dashboard" if dashboard else "")):
        return ensure_ray(plan, dashboard=dashboard)


class StopSignals:
    """SIGINT and SIGTERM as a byte in a pipe, whichever thread (Ray's included) they reach:
    `run` blocks on it until Ctrl-C, and a Ctrl-C while Serve deploys waits there too rather
    than interrupt the deployment half-way.

    Not by blocking the signals for `sigwait`: processes inherit a blocked mask, and the Ray
    processes started here would then ignore the SIGTERM that stops them at exit, so that Ray
    would wait a second for each before killing it."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.write_end, False)
        self.catch()

    def catch(self) -> None:
        """Route the signals to the pipe (again after a library installed its own handler)."""
        signal.set_wakeup_fd(self.write_end)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _ignore)

    def wait(self) -> None:
        os.read(self.read_end, 1)


def _ignore(signum: int, frame: object) -> None:
    """The signals' Python handler: the byte in the wakeup pipe is what `run` waits on."""


def show_replica_logs() -> None:
    """`run --access-log` on the embedded Ray: its replicas log to stderr, which Ray shows on
    this terminal (Serve's throughput-optimised mode writes their lines to files only)."""
    from ..serving.env import LOG_TO_STDERR_ENV

    os.environ.update(LOG_TO_STDERR_ENV)


def serve_logging(args: argparse.Namespace) -> dict[str, Any]:
    """Serve's `logging_config` for the application: `--log-level`, and the access log (INFO
    lines) only with `--access-log`."""
    return {"log_level": log_level(args), "enable_access_log": args.access_log}


def log_level(args: argparse.Namespace) -> str:
    """`--log-level`, lowered to INFO by `--access-log` (its lines are INFO)."""
    quieter = logging.getLevelName(args.log_level) > logging.INFO
    return "INFO" if args.access_log and quieter else args.log_level


def stop(handle: PipelineHandle | AppHandle) -> None:
    """After Ctrl-C: delete the application from a cluster we joined (`--address`,
    `RAY_ADDRESS`), which keeps running. An embedded Ray goes down with this process instead
    (Ray's exit hook stops every process it started, Serve's included, in a second or two):
    deleting the application first would keep the ingress replica up 30 s more in Serve's
    throughput-optimised mode, draining for a load balancer that is not there."""
    if os.environ.get("RAY_ADDRESS"):
        handle.shutdown()


def doors(plan: CompiledPipeline | CompiledApp, url: str) -> str:
    """Where requests go: a pipeline's URL, or each route of an `sg.App`."""
    routes = getattr(plan, "routes", None)
    if routes is None:
        return f"POST JSON to {url}"
    base = url.rstrip("/")
    return "; ".join([f"POST JSON to {base}{route}" for route in routes] or
                     [f"the ingress app at {base}/"])


def deploy(plan: CompiledPipeline | CompiledApp, args: argparse.Namespace
           ) -> PipelineHandle | AppHandle:
    """`sg.serve` the plan with the verb's name, route and port, a spinner on stderr meanwhile."""
    from ..serving import serve

    with waiting(f"deploying {plan.name!r}: {len(plan.served()) + 1} deployments"):
        return serve(plan, name=args.name, route_prefix=args.route_prefix, http_port=args.port,
                     logging_config=serve_logging(args))


def run_local(plan: CompiledPipeline | CompiledApp, args: argparse.Namespace) -> int:
    """`run --local`: the plan on the in-process executor behind the same HTTP API (uvicorn
    until Ctrl-C), announced once the server listens; an `sg.App`, its ingress app with
    every graph in-process (`local_front`)."""
    import uvicorn

    from ..serving import diagram_svg

    port = args.port or 8000
    if isinstance(plan, CompiledApp):
        from ..executors.local.front import local_front
        from ..serving.app import graph_diagrams

        app = local_front(plan, graph_diagrams(plan))
        print(plan.explain())
        print(f"serving {plan.name!r} in-process (no Ray): "
              f"{doors(plan, f'http://{args.host}:{port}')} (Ctrl-C stops)", flush=True)
    else:
        from ..executors.local import LocalExecutor
        from ..web.local_app import local_app

        route = args.route_prefix or f"/{plan.name}"
        url = f"http://{args.host}:{port}{route}"

        def announce() -> None:
            print(plan.explain())
            print(f"serving {plan.name!r} in-process (no Ray): POST JSON to {url} (Ctrl-C "
                  "stops)", flush=True)

        executor = LocalExecutor(plan)
        app = local_app(plan, route, executor.acall, diagram_svg=diagram_svg(plan),
                        stream=executor.astream if executor.program.streams else None,
                        on_startup=announce)
    uvicorn.run(app, host=args.host, port=port, log_level=log_level(args).lower(),
                access_log=args.access_log)
    return 0


def require_fractions(plan: CompiledPipeline | CompiledApp) -> None:
    """Every graph's GPU fractions known (a stage giving only `gpu_memory` needs the cluster
    flags to be served), or the one-line error, before anything starts."""
    from ..compiler.passes.resources import require_gpu_fractions

    for graph in getattr(plan, "plans", {"": plan}).values():
        require_gpu_fractions(graph, "serve")


def cmd_deploy(args: argparse.Namespace) -> int:
    from ..compiler import compile

    plan = compile(load_target(args.target), cluster=cluster_of(args))
    require_fractions(plan)  # before connecting, as a packing error is
    connect(args.address)
    handle = deploy(plan, args)
    print(plan.explain())
    print(f"deployed {handle.name!r}: {doors(plan, handle.url)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ..serving import admin

    connect(args.address)
    applications = admin.applications()
    if args.name and args.name not in applications:
        raise UsageError(f"no Serve application named {args.name!r} "
                         f"(running: {', '.join(sorted(applications)) or 'none'})")
    for name, app in sorted(applications.items()):
        if args.name and name != args.name:
            continue
        print(f"{name}  {app.status.value}")
        for deployment, state in sorted(app.deployments.items()):
            replicas = ", ".join(f"{k} {v}" for k, v in sorted(state.replica_states.items()))
            print(f"  {deployment:<24} {state.status.value:<10} {replicas}")
    if not applications:
        print("no Serve applications")
    if args.render:
        render_live(args.name, applications, args.render)
    return 0


def render_live(name: str | None, applications: dict[str, Any], path: str) -> None:
    """Draw one application's plan, each deployment coloured by its live Serve status."""
    from ..serving import connect as connect_app
    from ..visualize import LiveStatus, render

    if name is None:
        raise UsageError("--render draws one application: name it (servegraph status NAME "
                         "--render out.svg)")
    plan = connect_app(name, timeout_s=60).plan  # the plan its driver serves
    live = {deployment: LiveStatus(state.status.value, dict(state.replica_states))
            for deployment, state in applications[name].deployments.items()}
    render(plan, path, live=live)
    print(f"wrote {path}")


def cmd_shutdown(args: argparse.Namespace) -> int:
    from ..serving import admin

    connect(args.address)
    if args.name:
        admin.delete(args.name)
        print(f"deleted {args.name!r}")
    else:
        admin.shutdown_serve()
        print("Serve shut down")
    return 0

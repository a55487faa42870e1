"""The `servegraph` command (also `python -m servegraph`). Each verb takes `MODULE:ATTR`, an
`sg.Graph` (or a function returning one) in an importable module.

  check    compile and print diagnostics; exit 1 when the graph does not compile
  compile  print the plan's deployments, or the plan as JSON (`--json`, `-o plan.json`)
  render   draw the pipeline (`-o search.svg|.png|.pdf|.dot|.mmd`)
  run      serve it on Ray Serve (embedded local Ray, or `--address`) until Ctrl-C;
           `--local` serves it in-process (no Ray) behind the same HTTP API
  deploy   deploy onto a running Ray cluster (`--address` or RAY_ADDRESS) and return
  status   list Serve applications, deployments and replica states
  shutdown delete one application (`shutdown NAME`) or stop Serve
  bench    load a running route at a concurrency; print p50/p99/throughput and statuses

Errors print one message without a traceback unless `--debug`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .errors import PipelineError


class UsageError(PipelineError):
    """The command line names something that cannot be loaded."""


def load_graph(target: str) -> Any:
    """`pkg.module:attr` -> the `sg.Graph` there (a function is called with no arguments)."""
    from .dag import Graph

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"expected MODULE:ATTR (e.g. servegraph.pipelines.search:graph), "
                         f"got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc}") from exc
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if callable(value) and not isinstance(value, Graph):
        value = value()
    if not isinstance(value, Graph):
        raise UsageError(f"{target} is a {type(value).__name__}, not an sg.Graph")
    return value


def _summary(plan: Any) -> str:
    lines = [f"pipeline {plan.name!r}: {len(plan.nodes)} nodes, "
             f"{len(plan.deployments)} stage deployments + driver"]
    for stage in [*plan.deployments, plan.driver]:
        options = {k: v for k, v in stage.options.items() if k != "name"}
        rendered = ", ".join(f"{k}={v}" for k, v in options.items()) or "Serve defaults"
        batching = "".join(f"; batch {m} <= {b.max_batch_size}"
                           for m, b in stage.batching.items())
        lines.append(f"  {stage.name:<24} {stage.kind:<8} {rendered}{batching}")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    from .compiler import compile

    plan = compile(load_graph(args.target))
    print(f"ok: {plan.name!r} compiles ({', '.join(plan.passes)})")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from .compiler import compile

    plan = compile(load_graph(args.target))
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(plan.model_dump_json(indent=2))
        print(f"wrote {args.output}")
    elif args.json:
        print(plan.model_dump_json(indent=2))
    else:
        print(_summary(plan))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .visualize import render

    render(load_graph(args.target), args.output, format=args.format)
    print(f"wrote {args.output}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .compiler import compile

    plan = compile(load_graph(args.target))
    if args.local:
        return _run_local(plan, args)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address
    from .serving import serve

    with _waiting(f"deploying {plan.name!r}: {len(plan.deployments) + 1} deployments"):
        handle = serve(plan, name=args.name, route_prefix=args.route_prefix,
                       http_port=args.port)
    print(_summary(plan))
    print(f"serving {handle.name!r}: POST JSON to {handle.url} (Ctrl-C stops)", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        handle.shutdown()
    return 0


def _waiting(message: str) -> Any:
    """A spinner on stderr while Serve brings deployments up (silent when not a terminal)."""
    from rich.console import Console

    return Console(stderr=True).status(message)


def _connect(address: str | None) -> None:
    """Attach to an existing Ray cluster (`--address`, else `RAY_ADDRESS`)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UsageError("no cluster to talk to: pass --address (e.g. 127.0.0.1:6379) or set "
                         "RAY_ADDRESS")
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError) as exc:
        raise UsageError(f"cannot connect to Ray at {address}: {exc}") from exc


def cmd_deploy(args: argparse.Namespace) -> int:
    from .compiler import compile
    from .serving import serve

    plan = compile(load_graph(args.target))
    _connect(args.address)
    with _waiting(f"deploying {plan.name!r}: {len(plan.deployments) + 1} deployments"):
        handle = serve(plan, name=args.name, route_prefix=args.route_prefix,
                       http_port=args.port)
    print(_summary(plan))
    print(f"deployed {handle.name!r}: POST JSON to {handle.url}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ray import serve

    _connect(args.address)
    applications = serve.status().applications
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
        _render_live(args.name, applications, args.render)
    return 0


def _render_live(name: str | None, applications: dict[str, Any], path: str) -> None:
    """Draw one application's plan, each deployment coloured by its live Serve status."""
    from ray import serve

    from .compiler import CompiledPipeline
    from .visualize import LiveStatus, render

    if name is None:
        raise UsageError("--render draws one application: name it (servegraph status NAME "
                         "--render out.svg)")
    plan = CompiledPipeline.model_validate_json(
        serve.get_app_handle(name).plan.remote().result(timeout_s=60))
    live = {deployment: LiveStatus(state.status.value, dict(state.replica_states))
            for deployment, state in applications[name].deployments.items()}
    render(plan, path, live=live)
    print(f"wrote {path}")


def cmd_shutdown(args: argparse.Namespace) -> int:
    from ray import serve

    _connect(args.address)
    if args.name:
        serve.delete(args.name)
        print(f"deleted {args.name!r}")
    else:
        serve.shutdown()
        print("Serve shut down")
    return 0


def _run_local(plan: Any, args: argparse.Namespace) -> int:
    import uvicorn

    from .executors.http_local import local_app
    from .serving import diagram_svg

    route = args.route_prefix or f"/{plan.name}"
    port = args.port or 8000
    url = f"http://{args.host}:{port}{route}"

    def announce() -> None:
        print(_summary(plan))
        print(f"serving {plan.name!r} in-process (no Ray): POST JSON to {url} (Ctrl-C stops)",
              flush=True)

    app = local_app(plan, route, diagram_svg=diagram_svg(plan), on_startup=announce)
    uvicorn.run(app, host=args.host, port=port, log_level="warning")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from .bench import load

    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise UsageError(f"--payload is not JSON: {exc}") from None
    report = asyncio.run(load(args.url, payload, requests=args.requests,
                              concurrency=args.concurrency, timeout_s=args.timeout))
    print(report.render())
    return 0 if report.answered == args.requests else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servegraph", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    verbs = parser.add_subparsers(dest="verb", required=True)

    check = verbs.add_parser("check", help="compile and report errors")
    check.set_defaults(run=cmd_check)

    compile_ = verbs.add_parser("compile", help="print the compiled plan")
    compile_.add_argument("--json", action="store_true", help="the plan as JSON")
    compile_.add_argument("-o", "--output", help="write the plan JSON to this file")
    compile_.set_defaults(run=cmd_compile)

    render = verbs.add_parser("render", help="draw the pipeline")
    render.add_argument("-o", "--output", required=True, help=".svg .png .pdf .dot or .mmd")
    render.add_argument("--format", help="override the format the suffix implies")
    render.set_defaults(run=cmd_render)

    run = verbs.add_parser("run", help="serve over HTTP on Ray Serve until Ctrl-C")
    run.add_argument("--address", help="Ray cluster address (default: embedded local Ray)")
    run.add_argument("--name", help="Serve application name (default: the graph's name)")
    run.add_argument("--route-prefix", help="HTTP route (default: /<graph name>)")
    run.add_argument("--port", type=int, help="HTTP port for a Serve instance started here")
    run.add_argument("--local", action="store_true",
                     help="serve with the in-process local executor behind the same HTTP API")
    run.add_argument("--host", default="127.0.0.1", help="with --local: the address to bind")
    run.set_defaults(run=cmd_run)

    deploy = verbs.add_parser("deploy", help="deploy onto a running Ray cluster and return")
    deploy.add_argument("--name", help="Serve application name (default: the graph's name)")
    deploy.add_argument("--route-prefix", help="HTTP route (default: /<graph name>)")
    deploy.add_argument("--port", type=int, help="HTTP port when Serve is not yet running")
    deploy.set_defaults(run=cmd_deploy)

    status = verbs.add_parser("status", help="Serve applications and their replicas")
    status.add_argument("name", nargs="?", help="one application (default: all)")
    status.add_argument("--render", metavar="FILE",
                        help="draw the application's plan coloured by live status (.svg ...)")
    status.set_defaults(run=cmd_status)

    shutdown = verbs.add_parser("shutdown", help="delete an application, or stop Serve")
    shutdown.add_argument("name", nargs="?", help="the application (default: all of Serve)")
    shutdown.set_defaults(run=cmd_shutdown)

    bench = verbs.add_parser("bench", help="load a running route: p50/p99/throughput")
    bench.add_argument("url", help="the route, e.g. http://127.0.0.1:8000/search")
    bench.add_argument("--payload", required=True, help="the JSON body of every request")
    bench.add_argument("-n", "--requests", type=int, default=1000)
    bench.add_argument("-c", "--concurrency", type=int, default=32)
    bench.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    bench.set_defaults(run=cmd_bench)

    for sub in (deploy, status, shutdown):
        sub.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS)")
    for sub in (check, compile_, render, run, deploy):
        sub.add_argument("target", metavar="MODULE:ATTR", help="an sg.Graph, e.g. "
                         "servegraph.pipelines.search:graph")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except PipelineError as exc:
        if args.debug:
            raise
        print(f"servegraph {args.verb}: error: {exc}", file=sys.stderr)
        return 1

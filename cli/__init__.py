"""The `servegraph` command (also `python -m servegraph`). Each verb takes `MODULE:ATTR`, an
`sg.Graph` (or a function returning one) in an importable module.

  check    compile and print diagnostics; exit 1 when the graph does not compile
  compile  explain the plan (deployments, resources, GPU layout); `-o serve.yaml` writes a
           `serve deploy` config, `-o plan.json` (or `--json`) the plan, `--rayservice
           rayservice.yaml` a KubeRay RayService
  render   draw the pipeline (`-o search.svg|.png|.pdf|.dot|.mmd`)
  run      serve it on Ray Serve (embedded local Ray, or `--address`) until Ctrl-C;
           `--local` serves it in-process (no Ray) behind the same HTTP API
  deploy   deploy onto a running Ray cluster (`--address` or RAY_ADDRESS) and return
  status   list Serve applications, deployments and replica states
  shutdown delete one application (`shutdown NAME`) or stop Serve
  bench    load a running route at a concurrency; print p50/p99/throughput and statuses

check, compile, run and deploy pack GPU stages onto a cluster: `--gpus 4x80GiB` (or `--gpus 4
--gpu-memory 80GiB`), `--nodes 2 --gpus-per-node 8`, `--cpus` per node, or `--detect-cluster`
to read it from the running Ray cluster at `--address`.

Errors print one message without a traceback unless `--debug`; a bad flag is a usage error
(exit 2), a graph that does not compile or fit exits 1.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..dag.loader import load_graph
from ..errors import PipelineError

if TYPE_CHECKING:
    from ..compiler import ClusterSpec


class UsageError(PipelineError):
    """The command line names something that cannot be loaded."""


def cmd_check(args: argparse.Namespace) -> int:
    from ..compiler import compile

    plan = compile(load_graph(args.target), cluster=_cluster(args))
    print(f"ok: {plan.name!r} compiles ({', '.join(plan.passes)})")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    """Explain the plan, or write it: `-o x.yaml` a Serve config, `-o x.json` (or `--json`)
    the plan, `--rayservice x.yaml` a KubeRay RayService. With `--json` the "wrote" notes go
    to stderr so stdout stays JSON."""
    from ..compiler import compile

    plan = compile(load_graph(args.target), cluster=_cluster(args))
    if args.json:
        print(plan.model_dump_json(indent=2))
    elif not args.output:
        print(plan.explain())
    notes = sys.stderr if args.json else sys.stdout
    if args.output:
        if args.output.endswith(".json"):
            text = plan.model_dump_json(indent=2)
        else:
            text = _yaml(plan.to_serve_config(graph=args.target, host=args.host,
                                              port=args.port))
        _write(args.output, text)
        print(f"wrote {args.output}", file=notes)
    if args.rayservice:
        _write(args.rayservice, _yaml(plan.to_rayservice(
            graph=args.target, image=args.image, ray_version=args.ray_version)))
        print(f"wrote {args.rayservice}", file=notes)
    return 0


def _yaml(document: dict[str, Any]) -> str:
    """YAML in the document's key order; a multi-line string (a RayService's embedded Serve
    config) as a `|` block, as people write it by hand."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value,
                                       style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump(document, Dumper=Dumper, sort_keys=False)


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as handle:
            handle.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc


def _cluster(args: argparse.Namespace) -> ClusterSpec | None:
    """The `ClusterSpec` the flags give (parsed by `main`), or read from the running Ray
    cluster with `--detect-cluster`; None when neither."""
    if not args.detect_cluster:
        return args.cluster
    from ..serving.cluster import detect_cluster

    _connect(args.address, quiet=args.verb != "run")
    return detect_cluster(gpu_memory=args.gpu_memory)


def cmd_render(args: argparse.Namespace) -> int:
    from ..visualize import render

    render(load_graph(args.target), args.output, format=args.format)
    print(f"wrote {args.output}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..compiler import compile

    graph = load_graph(args.target)
    if not args.local:
        # before Ray starts a thread (`--detect-cluster` connects): only sigwait gets these
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        if args.address:
            os.environ["RAY_ADDRESS"] = args.address
    plan = compile(graph, cluster=_cluster(args))
    if args.local:
        return _run_local(plan, args)
    from ..serving import serve

    with _waiting(f"deploying {plan.name!r}: {len(plan.served()) + 1} deployments"):
        handle = serve(plan, name=args.name, route_prefix=args.route_prefix,
                       http_port=args.port)
    print(plan.explain())
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


def _connect(address: str | None, *, quiet: bool = True) -> None:
    """Attach to an existing Ray cluster (`--address`, else `RAY_ADDRESS`), once; `quiet`
    keeps Ray's and the replicas' logs off this terminal."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UsageError("no cluster to talk to: pass --address (e.g. 127.0.0.1:6379) or set "
                         "RAY_ADDRESS")
    try:
        if quiet:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(address=address)
    except (ConnectionError, RuntimeError) as exc:
        raise UsageError(f"cannot connect to Ray at {address}: {exc}") from exc


def cmd_deploy(args: argparse.Namespace) -> int:
    from ..compiler import compile
    from ..serving import serve

    plan = compile(load_graph(args.target), cluster=_cluster(args))
    _connect(args.address)
    with _waiting(f"deploying {plan.name!r}: {len(plan.served()) + 1} deployments"):
        handle = serve(plan, name=args.name, route_prefix=args.route_prefix,
                       http_port=args.port)
    print(plan.explain())
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

    from ..compiler import CompiledPipeline
    from ..visualize import LiveStatus, render

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

    from ..serving import diagram_svg
    from ..web.local_app import local_app

    route = args.route_prefix or f"/{plan.name}"
    port = args.port or 8000
    url = f"http://{args.host}:{port}{route}"

    def announce() -> None:
        print(plan.explain())
        print(f"serving {plan.name!r} in-process (no Ray): POST JSON to {url} (Ctrl-C stops)",
              flush=True)

    app = local_app(plan, route, diagram_svg=diagram_svg(plan), on_startup=announce)
    uvicorn.run(app, host=args.host, port=port, log_level="warning")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from .bench import Case, load, load_cases

    if (args.payload is None) == (args.cases is None):
        raise UsageError("give one of --payload (one body for every request) or --cases")
    if args.cases is not None:
        try:
            with open(args.cases) as lines:
                cases = [Case.parse(line) for line in lines if line.strip()]
        except (OSError, ValueError) as exc:
            raise UsageError(f"--cases {args.cases}: {exc}") from None
        if not cases:
            raise UsageError(f"--cases {args.cases}: no cases in it")
        checked = asyncio.run(load_cases(
            args.url, cases, requests=args.requests, concurrency=args.concurrency,
            timeout_s=args.timeout, progress_every=args.progress))
        print(checked.render(), flush=True)
        if args.json:
            with open(args.json, "w") as out:
                json.dump(checked.summary(), out, indent=2)
        return 0 if checked.lost == 0 else 1
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

    compile_ = verbs.add_parser("compile", help="explain the plan, or write it as a file")
    compile_.add_argument("--json", action="store_true", help="print the plan as JSON")
    compile_.add_argument("-o", "--output", type=_output_file, metavar="FILE",
                          help="a .yaml/.yml `serve deploy` config, or the plan as .json")
    compile_.add_argument("--host", default="0.0.0.0", help="HTTP host in the Serve config")
    compile_.add_argument("--port", type=_count(1), default=8000,
                          help="HTTP port in the Serve config (default: 8000)")
    compile_.add_argument("--rayservice", metavar="FILE",
                          help="write a KubeRay RayService manifest (YAML) to FILE")
    compile_.add_argument("--image", help="the RayService's container image")
    compile_.add_argument("--ray-version", help="the RayService's rayVersion")
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
    bench.add_argument("--payload", help="the JSON body of every request")
    bench.add_argument("--cases", help="a JSON-lines file of requests to cycle through, each "
                       '{"body": ...} or {"raw": "..."}, with {"expect": output} (checked) or '
                       '{"bad": true} (must get a 4xx)')
    bench.add_argument("--json", help="with --cases: write the checked summary here as JSON")
    bench.add_argument("--progress", type=int, default=0,
                       help="with --cases: print `answered N` every N requests")
    bench.add_argument("-n", "--requests", type=int, default=1000)
    bench.add_argument("-c", "--concurrency", type=int, default=32)
    bench.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    bench.set_defaults(run=cmd_bench)

    for sub in (deploy, status, shutdown):
        sub.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS)")
    for sub in (check, compile_):
        sub.add_argument("--address", help="with --detect-cluster: the Ray cluster to read "
                         "(default: RAY_ADDRESS)")
    for sub in (check, compile_, run, deploy):
        _add_cluster_flags(sub)
    for sub in (check, compile_, render, run, deploy):
        sub.add_argument("target", metavar="MODULE:ATTR", help="an sg.Graph, e.g. "
                         "servegraph.pipelines.search:graph")
    return parser


def _add_cluster_flags(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("cluster (GPU packing)")
    group.add_argument("--gpus", help="GPUs in all, with their memory: 4x80GiB (or 4)")
    group.add_argument("--gpu-memory", type=_size, help="memory of each GPU, e.g. 80GiB")
    group.add_argument("--nodes", type=_count(1), help="nodes the GPUs are spread over")
    group.add_argument("--gpus-per-node", type=_count(0), help="GPUs on each node")
    group.add_argument("--cpus", type=_cpus, help="CPUs on each node")
    group.add_argument("--detect-cluster", action="store_true",
                       help="read nodes, GPUs and CPUs from the running Ray cluster at "
                       "--address (GPU memory from this machine's GPU, or --gpu-memory)")
    sub.set_defaults(subparser=sub)


def _output_file(value: str) -> str:
    if not value.endswith((".yaml", ".yml", ".json")):
        raise argparse.ArgumentTypeError(
            f"{value!r}: write a Serve config (.yaml or .yml) or the plan (.json)")
    return value


def _size(value: str) -> str:
    from ..dag.options import parse_bytes

    try:
        parse_bytes(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`."""
    def count(value: str) -> int:
        if not value.strip().isdigit() or int(value) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, "
                                             f"got {value!r}")
        return int(value)

    return count


def _cpus(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of CPUs >= 0, got {value!r}")
    return number


def _cluster_flags(args: argparse.Namespace) -> None:
    """Check the cluster flags together and set `args.cluster` (a ClusterSpec, or None with
    no flags or with `--detect-cluster`, read later); a bad combination is a usage error."""
    from pydantic import ValidationError

    from ..compiler import ClusterSpec

    sizes = {"--gpus": args.gpus, "--nodes": args.nodes, "--gpus-per-node": args.gpus_per_node,
             "--cpus": args.cpus}
    given = [flag for flag, value in sizes.items() if value is not None]
    args.cluster = None
    if args.detect_cluster:
        if given:
            args.subparser.error(f"--detect-cluster reads the cluster from Ray; drop "
                                 f"{', '.join(given)} (or drop --detect-cluster)")
        return
    if not given:
        if args.gpu_memory is not None:
            args.subparser.error("--gpu-memory sizes the cluster's GPUs: give --gpus too "
                                 "(e.g. --gpus 4 --gpu-memory 80GiB) or --detect-cluster")
        return
    try:
        args.cluster = ClusterSpec.parse(gpus=args.gpus, nodes=args.nodes,
                                         gpus_per_node=args.gpus_per_node,
                                         gpu_memory=args.gpu_memory, cpus=args.cpus)
    except ValidationError as exc:
        args.subparser.error("; ".join(str(error["msg"]).removeprefix("Value error, ")
                                       for error in exc.errors()))
    except ValueError as exc:
        args.subparser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "detect_cluster"):
        _cluster_flags(args)
    try:
        return int(args.run(args))
    except PipelineError as exc:
        if args.debug:
            raise
        print(f"servegraph {args.verb}: error: {exc}", file=sys.stderr)
        return 1

"""The `servegraph` command line: one small function per verb declares its flags, the argument
types reject bad values as usage errors (exit 2) before anything is imported, and
`check_cluster_flags` checks the cluster flags together. Each verb's parser names the function
that runs it (`args.run`); the functions live in `compile_cmds`, `serve_cmds`, `bench_cmd`,
`profile_cmd` and `doctor_cmd`, which import the heavy parts only when they run.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from .bench_cmd import cmd_bench
from .compile_cmds import cmd_check, cmd_compile, cmd_render
from .doctor_cmd import cmd_doctor, cmd_top
from .profile_cmd import cmd_profile
from .serve_cmds import cmd_deploy, cmd_run, cmd_shutdown, cmd_status

if TYPE_CHECKING:
    Verbs = argparse._SubParsersAction[argparse.ArgumentParser]


def build_parser(description: str) -> argparse.ArgumentParser:
    """The parser of every verb, in the order `--help` lists them."""
    parser = argparse.ArgumentParser(prog="servegraph", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    verbs = parser.add_subparsers(dest="verb", required=True)
    for add_verb in (add_check, add_compile, add_render, add_run, add_deploy, add_status,
                     add_shutdown, add_bench, add_profile, add_doctor, add_top):
        add_verb(verbs)
    return parser


def add_check(verbs: Verbs) -> None:
    check = verbs.add_parser("check", help="compile and report errors")
    check.set_defaults(run=cmd_check)
    add_detect_address(check)
    add_cluster_flags(check)
    add_target(check)


def add_compile(verbs: Verbs) -> None:
    compile_ = verbs.add_parser("compile", help="explain the plan, or write it as a file")
    compile_.add_argument("--json", action="store_true", help="print the plan as JSON")
    compile_.add_argument("-o", "--output", type=output_file, metavar="FILE",
                          help="a .yaml/.yml `serve deploy` config, or the plan as .json")
    compile_.add_argument("--host", default="0.0.0.0", help="HTTP host in the Serve config")
    compile_.add_argument("--port", type=at_least(1), default=8000,
                          help="HTTP port in the Serve config (default: 8000)")
    compile_.add_argument("--grpc-port", type=at_least(1), metavar="PORT",
                          help="serve gRPC on PORT too (the Serve config's grpc_options)")
    compile_.add_argument("--proto", metavar="FILE",
                          help="write the gRPC service's .proto (for a client's stubs) to FILE")
    compile_.add_argument("--rayservice", metavar="FILE",
                          help="write a KubeRay RayService manifest (YAML) to FILE")
    compile_.add_argument("--image", help="the RayService's container image")
    compile_.add_argument("--ray-version", help="the RayService's rayVersion")
    add_planning_flags(compile_)
    compile_.set_defaults(run=cmd_compile)
    add_detect_address(compile_)
    add_cluster_flags(compile_)
    add_target(compile_)


def add_render(verbs: Verbs) -> None:
    render = verbs.add_parser(
        "render", help="draw the pipeline, or a compiled plan",
        description="Draw a graph, compiled for the cluster flags (its GPU layout beside it), "
        "or a plan written by `servegraph compile -o plan.json`, as it was compiled.")
    render.add_argument("-o", "--output", required=True, help=".svg .png .pdf .dot or .mmd")
    render.add_argument("--format", help="override the format the suffix implies")
    render.set_defaults(run=cmd_render)
    add_detect_address(render)
    add_cluster_flags(render)
    render.add_argument("target", metavar="MODULE:ATTR|PLAN.json", help="an sg.Graph (e.g. "
                        "servegraph.pipelines.search:graph), or a compiled plan's .json file "
                        "(the cluster flags do not apply: it was packed when compiled)")


def add_run(verbs: Verbs) -> None:
    run = verbs.add_parser("run", help="serve over HTTP on Ray Serve until Ctrl-C")
    run.add_argument("--address", help="Ray cluster address (default: embedded local Ray)")
    run.add_argument("--name", help="Serve application name (default: the graph's name)")
    run.add_argument("--route-prefix", help="HTTP route (default: /<graph name>)")
    run.add_argument("--port", type=int, help="HTTP port for a Serve instance started here")
    run.add_argument("--local", action="store_true",
                     help="serve with the in-process local executor behind the same HTTP API")
    run.add_argument("--host", default="127.0.0.1", help="with --local: the address to bind")
    run.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                     help="do not start Ray's dashboard with the embedded Ray (by default it "
                     "starts, and its URL is printed)")
    run.set_defaults(run=cmd_run)
    add_logging_flags(run)
    add_cluster_flags(run)
    add_target(run)


def add_deploy(verbs: Verbs) -> None:
    deploy = verbs.add_parser("deploy", help="deploy onto a running Ray cluster and return")
    deploy.add_argument("--name", help="Serve application name (default: the graph's name)")
    deploy.add_argument("--route-prefix", help="HTTP route (default: /<graph name>)")
    deploy.add_argument("--port", type=int, help="HTTP port when Serve is not yet running")
    deploy.set_defaults(run=cmd_deploy)
    add_logging_flags(deploy)
    add_cluster_address(deploy)
    add_cluster_flags(deploy)
    add_target(deploy)


def add_status(verbs: Verbs) -> None:
    status = verbs.add_parser("status", help="Serve applications and their replicas")
    status.add_argument("name", nargs="?", help="one application (default: all)")
    status.add_argument("--render", metavar="FILE",
                        help="draw the application's plan coloured by live status (.svg ...)")
    status.set_defaults(run=cmd_status)
    add_cluster_address(status)


def add_shutdown(verbs: Verbs) -> None:
    shutdown = verbs.add_parser("shutdown", help="delete an application, or stop Serve")
    shutdown.add_argument("name", nargs="?", help="the application (default: all of Serve)")
    shutdown.set_defaults(run=cmd_shutdown)
    add_cluster_address(shutdown)


def add_bench(verbs: Verbs) -> None:
    bench = verbs.add_parser("bench", help="load a running route: p50/p99/throughput")
    bench.add_argument("url", metavar="URL|NAME", help="the route, e.g. "
                       "http://127.0.0.1:8000/search, or the name of a servegraph application "
                       "running on the cluster at --address")
    add_cluster_address(bench)
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


def add_profile(verbs: Verbs) -> None:
    profile = verbs.add_parser(
        "profile", help="measure each stage's service time and memory (here, or on a Ray "
        "cluster's node)",
        description="Run the payloads through the pipeline in-process, then replay each "
        "stage's recorded inputs on its own: service time against batch size (sg.batch "
        "methods) and threads, and memory; with --address, as a Ray task on a node of that "
        "cluster. Progress goes to stderr.")
    profile.add_argument("--payloads", required=True, metavar="FILE.jsonl",
                         help="request bodies, one JSON value a line")
    profile.add_argument("-o", "--output", required=True, metavar="FILE.json",
                         help="where to write the profile (JSON)")
    profile.add_argument("--budget-s", type=positive_seconds, default=30.0,
                         help="seconds of measuring in all, shared by the stages (default: 30)")
    profile.add_argument("--address", help="profile on a node of this Ray cluster (a task "
                         "holding --cpus CPUs) instead of on this machine")
    profile.add_argument("--cpus", type=int, help="with --address: the CPUs the task holds "
                         "and sweeps threads over (default: the largest node's)")
    profile.add_argument("--graph", metavar="NAME", help="MOD:ATTR is an sg.App: profile "
                         "this graph of it (one profile a graph)")
    profile.set_defaults(run=cmd_profile)
    add_target(profile)


def add_doctor(verbs: Verbs) -> None:
    doctor = verbs.add_parser(
        "doctor", help="diagnose a live application: per-stage figures, bottleneck, fixes",
        description="Read the application's metrics (Ray's Prometheus endpoint), Serve's "
        "status and its plan; print each stage's p50/p99, utilisation, queue and batch fill, "
        "the bottleneck stage, and findings with the option that fixes each.")
    doctor.add_argument("name", help="the Serve application")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--profile", metavar="FILE.json",
                        help="a `servegraph profile` output: predicted vs observed")
    doctor.add_argument("--window", type=positive_seconds, default=None,
                        help="latency over the last N seconds (two scrapes), not since start")
    doctor.add_argument("--cold-start-s", type=positive_seconds, default=10.0,
                        help="report a constructor slower than this (default: 10)")
    doctor.set_defaults(run=cmd_doctor)
    add_cluster_address(doctor)


def add_top(verbs: Verbs) -> None:
    top = verbs.add_parser("top", help="a live application's stages, refreshed")
    top.add_argument("name", help="the Serve application")
    top.add_argument("-n", "--interval", type=positive_seconds, default=2.0,
                     help="seconds between refreshes (default: 2)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.set_defaults(run=cmd_top)
    add_cluster_address(top)


def add_planning_flags(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("capacity planning (from `servegraph profile`)")
    group.add_argument("--profile", metavar="FILE.json", action="append",
                       help="plan replicas, CPUs and request limits from this profile (with "
                       "no --target-rps: the most throughput the cluster flags allow); for an "
                       "sg.App, one per planned graph (each names its graph)")
    group.add_argument("--target-rps", type=per_graph, metavar="[GRAPH=]N", action="append",
                       help="with --profile: plan for N requests a second (an sg.App's graph: "
                       "GRAPH=N, once per graph)")
    group.add_argument("--target-p99-ms", type=per_graph, metavar="[GRAPH=]M",
                       action="append",
                       help="with --target-rps: each request within M ms at the 99th "
                       "percentile (an sg.App's graph: GRAPH=M)")


def per_graph(value: str) -> tuple[str | None, float]:
    """`N`, or `GRAPH=N` (an sg.App's graph): the graph's name (None) and the number > 0."""
    name, equals, number = value.rpartition("=")
    if equals and not name:
        raise argparse.ArgumentTypeError(f"expected N or GRAPH=N, got {value!r}")
    return (name or None), positive_number(number)


def positive_number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return number


def add_target(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("target", metavar="MODULE:ATTR", help="an sg.Graph, e.g. "
                     "servegraph.pipelines.search:graph")


def add_cluster_address(sub: argparse.ArgumentParser) -> None:
    """`--address` of the verbs that act on a running cluster."""
    sub.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS)")


def add_detect_address(sub: argparse.ArgumentParser) -> None:
    """`--address` of the verbs that talk to Ray only to read its size (`--detect-cluster`)."""
    sub.add_argument("--address", help="with --detect-cluster: the Ray cluster to read "
                     "(default: RAY_ADDRESS)")


def add_logging_flags(sub: argparse.ArgumentParser) -> None:
    """What the served application logs: quiet unless asked (Serve logs every request and
    every stage call by default, a few lines per request)."""
    group = sub.add_argument_group("logging")
    group.add_argument("--log-level", type=str.upper, default="WARNING", choices=LOG_LEVELS,
                       help="the level of Serve's log lines from the application's replicas "
                       "(with --local: uvicorn's) (default: WARNING)")
    group.add_argument("--access-log", action="store_true",
                       help="log a line per request and per stage call, naming the stage's "
                       "method (Serve's access log, at INFO: lowers --log-level to INFO)")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def add_cluster_flags(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("cluster (GPU packing)")
    group.add_argument("--gpus", help="GPUs in all, with their memory: 4x80GiB (or 4)")
    group.add_argument("--gpu-memory", type=byte_size, help="memory of each GPU, e.g. 80GiB")
    group.add_argument("--nodes", type=at_least(1), help="nodes the GPUs are spread over")
    group.add_argument("--gpus-per-node", type=at_least(0), help="GPUs on each node")
    group.add_argument("--cpus", type=cpu_count, help="CPUs on each node")
    group.add_argument("--detect-cluster", action="store_true",
                       help="read nodes, GPUs and CPUs from the running Ray cluster at "
                       "--address (GPU memory from this machine's GPU, or --gpu-memory)")
    sub.set_defaults(subparser=sub)


# --- argument types: a bad value is a usage error (exit 2) naming the flag -------------------


def output_file(value: str) -> str:
    if not value.endswith((".yaml", ".yml", ".json")):
        raise argparse.ArgumentTypeError(
            f"{value!r}: write a Serve config (.yaml or .yml) or the plan (.json)")
    return value


def byte_size(value: str) -> str:
    """A byte size as `sg.deployment(gpu_memory=...)` takes it ("80GiB"), checked, kept as
    text for `ClusterSpec.parse`."""
    from ..dag.options import parse_bytes

    try:
        parse_bytes(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`."""
    def whole_number(value: str) -> int:
        if not value.strip().isdigit() or int(value) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, "
                                             f"got {value!r}")
        return int(value)

    return whole_number


def positive_seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {value!r}")
    return number


def cpu_count(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError(f"expected a number of CPUs >= 0, got {value!r}")
    return number


def check_cluster_flags(args: argparse.Namespace) -> None:
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

"""The verbs that work on a graph without running it: `check`, `compile` and `render`. They need
no Ray unless `--detect-cluster` reads the cluster from one."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..dag.loader import load_target
from .common import UsageError, cluster_of, load_profile, write_file

if TYPE_CHECKING:
    from ..compiler import CompiledApp, CompiledPipeline


def cmd_check(args: argparse.Namespace) -> int:
    from ..compiler import compile

    plan = compile(load_target(args.target), cluster=cluster_of(args))
    graphs = getattr(plan, "plans", None)
    passes = next(iter(graphs.values())).passes if graphs else plan.passes
    what = f"app {plan.name!r} ({len(graphs)} graphs)" if graphs else repr(plan.name)
    print(f"ok: {what} compiles ({', '.join(passes)})")
    unknown = [stage.name for stage in plan.deployments if stage.resources.gpus is None]
    if unknown:
        print(f"note: {', '.join(unknown)} give{'s' if len(unknown) == 1 else ''} gpu_memory "
              "only: serving or deploying needs the cluster flags (e.g. --gpus 2x80GiB) to "
              "derive the GPU fraction; running in-process (run --local) needs none")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    """Explain the plan, or write it: `-o x.yaml` a Serve config, `-o x.json` (or `--json`)
    the plan, `--rayservice x.yaml` a KubeRay RayService, `--proto x.proto` the gRPC
    service's `.proto`. Each file written is noted in one
    line ("wrote ..."); the plan is explained only when no output is asked for. With `--json`
    the notes go to stderr so stdout stays JSON."""
    from ..compiler import compile

    profile, target = planning_of(args)
    plan = compile(load_target(args.target), cluster=cluster_of(args), profile=profile,
                   target=target)
    if args.json:
        print(plan.model_dump_json(indent=2))
    elif not (args.output or args.rayservice or args.proto):
        print(plan.explain())
    write_outputs(plan, args, notes=sys.stderr if args.json else sys.stdout)
    return 0


def planning_of(args: argparse.Namespace) -> tuple[Any, Any]:
    """The `Profile` `--profile` names and the `Target` of `--target-rps`/`--target-p99-ms`
    (None, None without them); for several profiles, or targets by graph (`GRAPH=N`, an
    sg.App's), the profiles as a list and the targets by graph. A target without a profile,
    or an unreadable profile, is the user's error."""
    from ..compiler.profile import Target

    rps, p99 = dict(args.target_rps or []), dict(args.target_p99_ms or [])
    if not args.profile:
        if rps or p99:
            raise UsageError("--target-rps and --target-p99-ms need --profile FILE.json "
                             "(written by `servegraph profile`)")
        return None, None
    for graph in p99:
        if graph not in rps:
            raise UsageError("--target-p99-ms needs --target-rps" if graph is None else
                             f"--target-p99-ms {graph}=... needs --target-rps {graph}=...")
    profiles = [load_profile(path) for path in args.profile]
    if len(profiles) == 1 and set(rps) <= {None}:
        target = None if None not in rps else Target(rps=rps[None], p99_ms=p99.get(None))
        return profiles[0], target
    if None in rps:
        raise UsageError("with several profiles, give each graph's target as "
                         "--target-rps GRAPH=N")
    return profiles, {graph: Target(rps=each, p99_ms=p99.get(graph))
                      for graph, each in rps.items()}


def write_outputs(plan: CompiledPipeline | CompiledApp, args: argparse.Namespace, *,
                  notes: Any) -> None:
    """The files `compile -o` and `--rayservice` name, each noted ("wrote ...") on `notes`
    (an `sg.App`'s `--proto x.proto`: a file per graph, `x_<graph>.proto`)."""
    if args.output:
        if args.output.endswith(".json"):
            text = plan.model_dump_json(indent=2)
        else:
            text = to_yaml(plan.to_serve_config(args.target, host=args.host,
                                                port=args.port, grpc_port=args.grpc_port))
        write_file(args.output, text)
        print(f"wrote {args.output}", file=notes)
    if args.rayservice:
        write_file(args.rayservice, to_yaml(plan.to_rayservice(
            args.target, image=args.image, ray_version=args.ray_version)))
        print(f"wrote {args.rayservice}", file=notes)
    if args.proto:  # the gRPC service's messages, for a client's stubs
        protos = plan.to_proto()
        if isinstance(protos, str):
            protos = {"": protos}
        stem, dot, suffix = args.proto.rpartition(".")
        for graph, text in protos.items():
            path = f"{stem}_{graph}{dot}{suffix}" if graph and stem else \
                (f"{args.proto}_{graph}" if graph else args.proto)
            write_file(path, text)
            print(f"wrote {path}", file=notes)


def to_yaml(document: dict[str, Any]) -> str:
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


def cmd_render(args: argparse.Namespace) -> int:
    """Draw a graph compiled for the cluster flags, or a compiled plan read from .json."""
    from ..compiler import compile
    from ..visualize import render

    if args.target.endswith(".json"):
        if args.cluster is not None or args.detect_cluster:
            args.subparser.error(f"{args.target} is a compiled plan, packed when it was "
                                 "compiled: drop the cluster flags, or render the graph "
                                 "(MODULE:ATTR) with them")
        plan = read_plan(args.target)
    else:
        plan = compile(load_target(args.target), cluster=cluster_of(args))
    render(plan, args.output, format=args.format)
    print(f"wrote {args.output}")
    return 0


def read_plan(path: str) -> CompiledPipeline:
    """A plan `servegraph compile -o plan.json` wrote; an unreadable one is the user's error."""
    from pydantic import ValidationError

    from ..compiler import CompiledPipeline

    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return CompiledPipeline.model_validate_json(text)
    except ValidationError as exc:
        raise UsageError(f"{path} is not a plan written by `servegraph compile -o plan.json`: "
                         f"{exc.error_count()} error(s), the first: "
                         f"{exc.errors()[0]['msg']}") from exc

"""The verbs that work on a graph without running it: `check`, `compile` and `render`. They need
no Ray unless `--detect-cluster` reads the cluster from one."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..dag.loader import load_graph
from .common import cluster_of, write_file

if TYPE_CHECKING:
    from ..compiler import CompiledPipeline


def cmd_check(args: argparse.Namespace) -> int:
    from ..compiler import compile

    plan = compile(load_graph(args.target), cluster=cluster_of(args))
    print(f"ok: {plan.name!r} compiles ({', '.join(plan.passes)})")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    """Explain the plan, or write it: `-o x.yaml` a Serve config, `-o x.json` (or `--json`)
    the plan, `--rayservice x.yaml` a KubeRay RayService. With `--json` the "wrote" notes go
    to stderr so stdout stays JSON."""
    from ..compiler import compile

    plan = compile(load_graph(args.target), cluster=cluster_of(args))
    if args.json:
        print(plan.model_dump_json(indent=2))
    elif not args.output:
        print(plan.explain())
    write_outputs(plan, args, notes=sys.stderr if args.json else sys.stdout)
    return 0


def write_outputs(plan: CompiledPipeline, args: argparse.Namespace, *, notes: Any) -> None:
    """The files `compile -o` and `--rayservice` name, each noted ("wrote ...") on `notes`."""
    if args.output:
        if args.output.endswith(".json"):
            text = plan.model_dump_json(indent=2)
        else:
            text = to_yaml(plan.to_serve_config(graph=args.target, host=args.host,
                                                port=args.port))
        write_file(args.output, text)
        print(f"wrote {args.output}", file=notes)
    if args.rayservice:
        write_file(args.rayservice, to_yaml(plan.to_rayservice(
            graph=args.target, image=args.image, ray_version=args.ray_version)))
        print(f"wrote {args.rayservice}", file=notes)


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
    from ..visualize import render

    render(load_graph(args.target), args.output, format=args.format)
    print(f"wrote {args.output}")
    return 0

"""`servegraph profile`: each stage's service time against batch size and threads (CPUs per
replica), and its memory, measured in-process on this machine (`serving.profile`), written as
a JSON `Profile` that `servegraph compile --profile` plans from. Progress goes to stderr; a
summary line per stage and the file written go to stdout. With `--address` the measuring runs
as a Ray task on a node of that cluster (`serving.profile_remote`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..dag.loader import load_target
from .common import UsageError, write_file


def cmd_profile(args: argparse.Namespace) -> int:
    from ..serving.profile import profile

    payloads = read_payloads(args.payloads)
    if args.cpus is not None and args.address is None:
        raise UsageError("--cpus needs --address: here the profile sweeps this machine's CPUs")
    result = profile(graph_of(args), payloads, budget_s=args.budget_s,
                     progress=lambda line: print(line, file=sys.stderr, flush=True),
                     address=args.address, cpus=args.cpus)
    write_file(args.output, result.model_dump_json(indent=2))
    for stage in result.stages:
        print(stage.summary())
    print(f"wrote {args.output}")
    return 0


def graph_of(args: argparse.Namespace) -> Any:
    """The graph to profile: MOD:ATTR's `sg.Graph`, or the `--graph` of its `sg.App` (each
    graph of an app is profiled on its own, and `compile --profile` takes one a graph)."""
    from ..dag.app import App
    from ..dag.graph import Graph

    found = load_target(args.target, Graph, App)
    if isinstance(found, Graph):
        if args.graph is not None:
            raise UsageError(f"--graph picks a graph of an sg.App; {args.target} is a graph")
        return found
    names = ", ".join(found.graphs)
    if args.graph is None:
        raise UsageError(f"{args.target} is an sg.App: profile one of its graphs at a time "
                         f"with --graph NAME (its graphs: {names})")
    if args.graph not in found.graphs:
        raise UsageError(f"{args.target} has no graph {args.graph!r} (its graphs: {names})")
    return found.graphs[args.graph]


def read_payloads(path: str) -> list[Any]:
    """The request bodies of a JSON-lines file, one a line (blank lines skipped); a line that
    is not JSON is the user's error, named by its number."""
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    payloads = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            payloads.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{number}: not JSON: {exc.msg}") from exc
    if not payloads:
        raise UsageError(f"{path} holds no payloads: write one JSON request body a line")
    return payloads

"""The `servegraph` command (also `python -m servegraph`). Each verb takes `MODULE:ATTR`, an
`sg.Graph` or an `sg.App` (or a function returning one) in an importable module.

  check    compile and print diagnostics; exit 1 when the graph does not compile
  compile  explain the plan (deployments, resources, GPU layout); `-o serve.yaml` writes a
           `serve deploy` config, `-o plan.json` (or `--json`) the plan, `--rayservice
           rayservice.yaml` a KubeRay RayService, `--proto x.proto` the gRPC service;
           `--profile p.json --target-rps N` plans replicas and CPUs to a target
  render   draw the pipeline or a compiled plan .json (`-o search.svg|.png|.pdf|.dot|.mmd`)
  run      serve it on Ray Serve (embedded local Ray, or `--address`) until Ctrl-C;
           `--local` serves it in-process (no Ray) behind the same HTTP API
  deploy   deploy onto a running Ray cluster (`--address` or RAY_ADDRESS) and return
  status   list Serve applications, deployments and replica states
  shutdown delete one application (`shutdown NAME`) or stop Serve
  doctor   diagnose a live application: per-stage p50/p99, busy, queue, batch fill, findings
  top      the same per-stage figures, refreshed (--once: one frame)
  profile  each stage's service time per batch size and threads (`--payloads p.jsonl`)
  bench    load a running route at a concurrency; print p50/p99/throughput and statuses

check, compile, render, run and deploy pack GPU stages onto a cluster: `--gpus 4x80GiB` (or
`--gpus 4 --gpu-memory 80GiB`), `--nodes 2 --gpus-per-node 8`, `--cpus` per node, or
`--detect-cluster` to read it from the running Ray cluster at `--address`; `run` starts its
embedded Ray with those GPUs (logical ones: none need exist). `render` also draws a plan
written by `compile -o plan.json`.

run and deploy keep the application's logs quiet: no line per request unless `--access-log`
(Serve's access log: a line per request and per stage call, naming the stage's method), and
Serve's own lines from `--log-level` up (default WARNING).

Errors print one message without a traceback unless `--debug`; a bad flag is a usage error
(exit 2), a graph that does not compile or fit exits 1.

The package: `parser` declares the verbs and their flags, `compile_cmds` (check, compile,
render), `serve_cmds` (run, deploy, status, shutdown) and `bench_cmd` run them, `common` holds
what they share, and `bench` is the HTTP load generator.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..errors import PipelineError
from .parser import build_parser, check_cluster_flags


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, check the cluster flags, run the verb. A `PipelineError` (the graph, the
    cluster or the command line is wrong) prints one line and exits 1; anything else is a bug
    and keeps its traceback."""
    args = build_parser(description=help_text(__doc__)).parse_args(argv)
    if hasattr(args, "detect_cluster"):
        check_cluster_flags(args)
    try:
        return int(args.run(args))
    except PipelineError as exc:
        if args.debug:
            raise
        print(f"servegraph {args.verb}: error: {exc}", file=sys.stderr)
        return 1


def help_text(doc: str | None) -> str:
    """What `--help` shows: the docstring up to its note for whoever edits this package (the
    paragraph that opens "The package:"), as it is written."""
    return (doc or "").split("\n\nThe package:")[0].strip()


__all__ = ["main"]

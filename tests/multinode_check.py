"""Proof on Ray: a plan packed for a two-node cluster is placed by Ray as planned.

Starts a simulated cluster (`ray.cluster_utils.Cluster`, logical GPUs: a head node with 2 and a
worker node with 1, no dashboard), reads its spec with `detect_cluster`, compiles a pipeline of
fractional GPU stages that needs all 3 GPUs, deploys it with `sg.serve` and checks that every
replica runs (none pending), that the replicas share GPUs as the plan says (each replica records
its node and `CUDA_VISIBLE_DEVICES`; GPU numbering and nodes may differ, the partition must not)
and that a request is answered end to end, over a handle and over HTTP. The cluster, Serve in
it, is stopped in `finally`, also on a deadline or Ctrl-C; were the check killed, the reaper
processes `Cluster` starts stop the cluster.

Run in its own process (tests/serving/test_multinode.py does): pytest's own Ray may be running
in the test process. Node names are printed as `head` and `worker`, so the output is the same on
every run except the line that says where Ray put the replicas. The last line is `multinode check
passed` or `multinode check failed: ...` (exit status 0 or 1).

    PYTHONPATH=. python -m tests.multinode_check [--graph pairs] [--views DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

GPUS_PER_NODE = (2, 1)  # head, worker
CPUS_PER_NODE = 8
GPU_MEMORY = "24GiB"

# graph name -> (builder in tests.multinode_stages, request, answer)
GRAPHS: dict[str, tuple[str, Any, Any]] = {
    "placement": ("placement_graph", {"text": "rank these little words"},
                  "little > these > words > rank"),
    "pairs": ("pairs_graph", {"x": 1}, 4),
}


class CheckFailed(Exception):
    """A check did not hold; the message says which and what was seen."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_views(views: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(views.glob("*.json"))]


def sharing_per_node(views: list[dict[str, Any]], names: dict[str, str]
                     ) -> dict[str, list[list[str]]]:
    """Per node (named by `names`), per GPU Ray handed out (its CUDA_VISIBLE_DEVICES there),
    the sorted stage names of the replicas on it."""
    gpus: dict[tuple[str, str], list[str]] = {}
    for view in views:
        gpus.setdefault((names.get(view["node_id"], view["node_id"]), view["cuda"]),
                        []).append(view["stage"])
    nodes: dict[str, list[list[str]]] = {}
    for (node, _), stages in sorted(gpus.items()):
        nodes.setdefault(node, []).append(sorted(stages))
    return {node: sorted(sharing) for node, sharing in sorted(nodes.items())}


def planned_per_node(plan: Any, names: dict[str, str]) -> dict[str, list[list[str]]]:
    nodes: dict[str, list[list[str]]] = {}
    for gpu in plan.gpu_layout.gpus:
        if gpu.replicas:
            nodes.setdefault(names[gpu.node], []).append(sorted(r.stage for r in gpu.replicas))
    return {node: sorted(sharing) for node, sharing in sorted(nodes.items())}


def partition(per_node: dict[str, list[list[str]]]) -> list[list[str]]:
    return sorted(stages for sharing in per_node.values() for stages in sharing)


def on_deadline(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError


def deploy(plan: Any, views: Path, deadline_s: int) -> Any:
    """`sg.serve(plan)`, which returns once every replica runs; a replica left pending would
    keep it waiting, so it gives up after `deadline_s`, saying what had started."""
    import ray
    from ray import serve

    import servegraph as sg

    signal.signal(signal.SIGALRM, on_deadline)
    signal.alarm(deadline_s)
    try:
        return sg.serve(plan)
    except TimeoutError:
        status = serve.status().applications.get(plan.name)
        states = None if status is None else {
            name: dict(d.replica_states) for name, d in status.deployments.items()}
        raise CheckFailed(
            f"not every replica started within {deadline_s}s: replica states {states}, "
            f"views {read_views(views)}, available {ray.available_resources()}") from None
    finally:
        signal.alarm(0)


def run_check(graph: str, views: Path, deadline_s: int) -> None:
    import httpx
    import ray
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    import servegraph as sg
    from tests import multinode_stages

    builder, request, expected_answer = GRAPHS[graph]
    spec = sg.detect_cluster(gpu_memory=GPU_MEMORY)
    check([node.gpus for node in spec.nodes] == list(GPUS_PER_NODE),
          f"detect_cluster saw {spec.describe()}")
    head = ray.get_runtime_context().get_node_id()
    names: dict[str, str] = {}
    for node in spec.nodes:
        node_id = node.labels["ray.io/node-id"]
        names[node.name] = names[node_id] = "head" if node_id == head else "worker"

    build: Callable[[str], Any] = getattr(multinode_stages, builder)
    plan = sg.compile(build(str(views)), cluster=spec)
    explained = plan.explain()
    for node in spec.nodes:
        explained = explained.replace(node.name, names[node.name])
    print(explained)
    layout = plan.gpu_layout
    check(layout is not None and layout.used == spec.gpus,
          f"the plan should need all {spec.gpus} GPUs")
    assert layout is not None
    planned = planned_per_node(plan, names)
    print(f"planned per node: {planned}")
    print(f"planned sharing: {partition(planned)}")
    check(partition(planned) == sorted(layout.sharing()), "planned_per_node lost a GPU")

    serve.start(proxy_location="HeadOnly",
                http_options={"host": "127.0.0.1", "port": free_port()})
    handle = deploy(plan, views, deadline_s)

    application = serve.status().applications[plan.name]
    states = {name: dict(status.replica_states)
              for name, status in sorted(application.deployments.items())}
    print(f"application {application.status.value}; replica states: {states}")
    replicas = {stage.name: stage.resources.replicas.start
                for stage in [*plan.served(), plan.driver]}
    check(application.status == ApplicationStatus.RUNNING, "the application is not RUNNING")
    check(states == {name: {"RUNNING": count} for name, count in sorted(replicas.items())},
          f"expected every replica RUNNING: {replicas}")

    seen = read_views(views)
    gpu_replicas = sum(len(gpu.replicas) for gpu in layout.gpus)
    print(f"GPU replicas that recorded their view: {len(seen)} of {gpu_replicas}")
    check(len(seen) == gpu_replicas, "each GPU replica records its view once")
    for view in seen:
        check(len(view["gpu_ids"]) == 1 and view["cuda"] == view["gpu_ids"][0],
              f"a fractional replica sees one GPU, its own: {view}")
    placed = sharing_per_node(seen, names)
    print(f"ray per node: {placed}")
    print(f"ray sharing: {partition(placed)}")
    check(partition(placed) == partition(planned),
          f"Ray shares GPUs as {partition(placed)}, the plan says {partition(planned)}")

    used = sum(replica.gpus for gpu in layout.gpus for replica in gpu.replicas)
    free = ray.available_resources().get("GPU", 0.0)
    print(f"GPUs free: {free:g} of {spec.gpus}")
    check(abs(free - (spec.gpus - used)) < 1e-6,
          f"the plan leaves {spec.gpus - used:g} GPUs free; a replica is missing or extra")

    answer = handle.call(request, timeout_s=120)
    over_http = httpx.post(handle.url, json=request, timeout=120).json()
    print(f"answer: {answer!r}; over HTTP: {over_http!r}")
    check(answer == expected_answer and over_http == expected_answer,
          f"expected {expected_answer!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--graph", choices=sorted(GRAPHS), default="placement")
    parser.add_argument("--views", type=Path, default=None,
                        help="directory the replicas record their views in (default: a "
                        "temporary one)")
    parser.add_argument("--deadline", type=int, default=300,
                        help="seconds the deployment may take before the check gives up")
    args = parser.parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster

    from servegraph.serving.env import SERVE_ENV

    # as the runner's embedded Ray does: Serve places replicas the way the pack pass plans
    os.environ.update(SERVE_ENV)

    # Ctrl-C (SIGINT) stops the check through its `finally`s, even when started with SIGINT
    # ignored (in the background); the driver's SIGTERM belongs to Ray, which aborts on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="servegraph-views-") as scratch:
        views = args.views or Path(scratch)
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": CPUS_PER_NODE, "num_gpus": GPUS_PER_NODE[0],
            "include_dashboard": False})
        try:
            for gpus in GPUS_PER_NODE[1:]:
                cluster.add_node(num_cpus=CPUS_PER_NODE, num_gpus=gpus)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
            run_check(args.graph, views, args.deadline)
        except CheckFailed as failed:
            print(f"multinode check failed: {failed}")
            return 1
        except Exception as error:  # the traceback on stderr, the verdict on stdout
            traceback.print_exc()
            print(f"multinode check failed: {type(error).__name__}: {error}")
            return 1
        finally:
            # the cluster goes with Serve in it: stopping Serve first only waited out its
            # replicas' graceful shutdown
            try:
                ray.shutdown()
            finally:
                cluster.shutdown()
    print("multinode check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A plan as a KubeRay `RayService`: its Serve config plus a Ray cluster sized from the packing.

`spec.serveConfigV2` is `plan.to_serve_config(graph)` as a YAML string (KubeRay takes a string).
`spec.rayClusterConfig` holds three kinds of pods:

- the head: `num-cpus: "0"`, so no replica that reserves a CPU lands there and the GCS, the
  dashboard and the Serve controller keep the head to themselves (the driver and the proxies
  reserve no CPU and may run anywhere);
- one GPU worker group per distinct GPU node shape of the cluster spec (GPUs, GPU memory, CPUs,
  labels), one pod per node the GPU layout uses: `replicas` counts those nodes, and
  `nvidia.com/gpu` is the GPUs the plan places on such a node at most (autoscaling included),
  not all it has: a node of 2 GPUs whose replicas share one gets a pod of 1 GPU, leaving the
  other GPU of such a Kubernetes node to other pods. (When Ray, placing onto such smaller
  pods, would leave out a replica that the spec's nodes hold, every pod asks for its node's
  GPUs instead: `_sized`.) Without a cluster spec the layout is unbounded and each pod holds
  one GPU, except a replica of k whole GPUs, which gets a pod of k GPUs;
- one CPU worker group, `worker_cpus` per pod, enough pods for the CPU stages' replicas
  (`num_cpus` each, 1 by default; the driver reserves none), packed first-fit decreasing.

`minReplicas` is `replicas`: the pods the replicas placed at deploy time need. `maxReplicas`
counts the pods needed when every autoscaled stage runs its `max_replicas`, the extra GPU
replicas packed onto the layout as Ray would place them (on a cluster spec, at most its nodes:
what does not fit stays pending). When some group may grow, `enableInTreeAutoscaling` is on so
the Ray autoscaler adds those pods as Serve scales up and removes them when idle.

A pod's CPUs are its node's `cpus` when the spec gives them, else what the replicas it holds
at most reserve (at least 1); its memory is `memory_per_cpu` per CPU; requests equal limits.
Pure: Ray is imported only to read its version when `ray_version` is not given.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import yaml

from ...dag import parse_bytes
from ...errors import CompileError
from ..cluster import NodeSpec, format_bytes
from ..passes.pack import PACK_SCHEDULING_ENV, Bin, Demand, pack, replica_demands
from ..passes.resources import RESOLUTION, require_gpu_fractions, to_units
from ..plan import GpuLayout, Plan, StagePlan
from .serve_config import serve_config

PASS = "rayservice"
API_VERSION = "ray.io/v1"
PINNED_RAY_VERSION = "2.60.0"  # the `serve` extra's pin: the default when Ray is not installed
PYTHON_TAG = "py311"
MAX_NAME_LENGTH = 47  # KubeRay: a RayService name is a DNS-1035 label of at most 47 characters
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
HEAD_PORTS = (("gcs-server", 6379), ("dashboard", 8265), ("client", 10001), ("serve", 8000))


@dataclass(frozen=True)
class Pod:
    """A GPU worker pod: its key (a node of the spec, or a GPU or replica without one), its
    GPUs and the CPUs its replicas reserve."""

    key: str
    gpus: int
    cpus: float


@dataclass(frozen=True)
class WorkerGroup:
    """A worker group: pods at deploy time and at most, and what each pod holds."""

    name: str
    replicas: int
    most: int
    cpus: int
    gpus: int = 0
    labels: tuple[tuple[str, str], ...] = ()


def rayservice(plan: Plan, graph: str | None = None, *, name: str | None = None,
               image: str | None = None, gpu_image: str | None = None,
               ray_version: str | None = None, namespace: str | None = None,
               runtime_env: dict[str, Any] | None = None, worker_cpus: int = 4,
               memory_per_cpu: int | str = "4GiB", head_cpus: int = 2,
               head_memory: int | str = "8GiB") -> dict[str, Any]:
    """A KubeRay `RayService` manifest (dict) serving `plan`.

    `graph` is the `module:attr` the Serve config imports (as for `to_serve_config`); `name`
    defaults to the plan's name made a Kubernetes name (`rag_search` -> `rag-search`).
    `image` runs every pod (default `rayproject/ray:<ray_version>-py311`), `gpu_image` the GPU
    pods (default `image`, else `rayproject/ray:<ray_version>-py311-gpu`); `ray_version`
    defaults to the installed Ray's. The image must contain servegraph and the module holding
    the graph and its stages: Ray's stock images have neither, so build one on top of them or
    ship them with `runtime_env` (it goes into the Serve config). Sizes: `worker_cpus` per CPU
    pod, `memory_per_cpu` for every worker pod, `head_cpus` and `head_memory` for the head.
    Worker groups: the GPU groups (named `gpu-<GPUs per pod>x<GPU memory>`, in the order the
    cluster spec first lists each shape, else by GPUs per pod), then `cpu`.
    """
    require_gpu_fractions(plan, PASS)
    metadata = {"name": name if name is not None else k8s_name(plan.name)}
    _check_name(metadata["name"], given=name is not None)
    if namespace:
        metadata["namespace"] = namespace
    version = ray_version or installed_ray_version()
    cpu_image = image or f"rayproject/ray:{version}-{PYTHON_TAG}"
    gpu_image = gpu_image or image or f"rayproject/ray:{version}-{PYTHON_TAG}-gpu"
    per_cpu = parse_bytes(memory_per_cpu)
    stages = [*plan.served(), plan.driver]
    groups = [*gpu_groups(plan, stages), *cpu_groups(stages, worker_cpus)]
    workers = [_worker(group, gpu_image if group.gpus else cpu_image, per_cpu)
               for group in groups]
    cluster: dict[str, Any] = {"rayVersion": version}
    if any(group.most > group.replicas for group in groups):
        cluster["enableInTreeAutoscaling"] = True
    cluster["headGroupSpec"] = {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": {"spec": {"containers": [{
            "name": "ray-head", "image": cpu_image,
            "ports": [{"name": port, "containerPort": number} for port, number in HEAD_PORTS],
            # the Serve controller runs on the head: place replicas as the pack pass planned
            "env": [{"name": name, "value": value} for name, value in PACK_SCHEDULING_ENV.items()],
            "resources": _resources(head_cpus, parse_bytes(head_memory)),
        }]}},
    }
    cluster["workerGroupSpecs"] = workers
    config = serve_config(plan, graphs=[graph], runtime_env=runtime_env)
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": metadata,
        "spec": {"serveConfigV2": yaml.safe_dump(config, sort_keys=False),
                 "rayClusterConfig": cluster},
    }


def installed_ray_version() -> str:
    """The installed Ray's version; the pinned one when Ray is not installed."""
    try:
        import ray
    except ImportError:
        return PINNED_RAY_VERSION
    return str(ray.__version__)


def k8s_name(text: str) -> str:
    """`rag_search` -> `rag-search`: lowercase, '-' for any other character, at most 47."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return name[:MAX_NAME_LENGTH].rstrip("-")


def gpu_pods(layout: GpuLayout | None, stages: list[StagePlan]) -> tuple[list[Pod], list[Pod]]:
    """The GPU pods the replicas need at deploy time, and when every stage runs its maximum
    (on a cluster spec, a pod holds the GPUs the plan places on its node: see `_sized`)."""
    bounded = layout is not None and layout.bounded
    by_name = {stage.name: stage for stage in stages}
    bins = [] if layout is None else [
        Bin(slot.node, slot.index, slot.memory, free=RESOLUTION - to_units(slot.fraction_used),
            items=[(Demand(r.stage, r.replica, to_units(by_name[r.stage].resources.gpus or 0)),
                    to_units(r.gpus)) for r in slot.replicas])
        for slot in layout.gpus]
    gpu_stages = [(order, s) for order, s in enumerate(stages) if s.resources.gpus]
    grow = None if bounded else Bin("gpu", 0, None)
    if layout is None:
        pack(_demands(gpu_stages, extra=False), bins, grow=grow)
    start = _pods(bins, bounded, by_name)
    pack(_demands(gpu_stages, extra=True), bins, grow=grow)
    most = _pods(bins, bounded, by_name)
    return _sized(bins, start, most, gpu_stages) if bounded else (start, most)


def _sized(bins: list[Bin], start: list[Pod], most: list[Pod],
           gpu_stages: list[tuple[int, StagePlan]]) -> tuple[list[Pod], list[Pod]]:
    """The pods of a cluster spec's nodes, each holding the GPUs the plan places on its node
    at most, not all the node's (a node of 2 GPUs whose replicas share 1 gets a 1-GPU pod).
    Ray then places the replicas on smaller nodes than the pack pass planned for, so its
    placement is replayed there (the deploy-time replicas, then the ones autoscaling adds):
    should it leave out a replica that the whole nodes hold (a wide replica added later,
    rarely), every pod asks for its node's GPUs instead."""
    memory = {gpu.node: gpu.memory for gpu in bins}
    pods = [Bin(pod.key, index, memory[pod.key]) for pod in most for index in range(pod.gpus)]
    pack(_demands(gpu_stages, extra=False), pods)
    pack(_demands(gpu_stages, extra=True), pods)
    gpus: dict[str, int] = {pod.key: pod.gpus for pod in most}
    if len(_replicas(pods)) < len(_replicas(bins)):
        gpus = Counter(gpu.node for gpu in bins)
    return ([replace(pod, gpus=gpus[pod.key]) for pod in start],
            [replace(pod, gpus=gpus[pod.key]) for pod in most])


def _replicas(bins: list[Bin]) -> set[tuple[str, int]]:
    return {(demand.stage, demand.replica) for gpu in bins for demand, _ in gpu.items}


def gpu_groups(plan: Plan, stages: list[StagePlan]) -> list[WorkerGroup]:
    """One group per GPU node shape of the cluster spec, counting the GPUs the plan uses on
    a node (per GPUs per pod without a spec)."""
    start, most = gpu_pods(plan.gpu_layout, stages)
    layout = plan.gpu_layout
    if layout is not None and layout.bounded and plan.cluster is not None:
        used = {pod.key: pod.gpus for pod in most}
        shapes: dict[tuple[Any, ...], list[NodeSpec]] = {}
        for node in plan.cluster.nodes:
            if node.name in used:  # a pod of the GPUs the plan uses on the node
                sized = node.model_copy(update={"gpus": used[node.name]})
                shapes.setdefault(_shape(sized), []).append(sized)
        specs = [(nodes[0], {node.name for node in nodes}) for nodes in shapes.values()]
    else:  # a pod shape per GPU count
        specs = [(NodeSpec(gpus=width), {pod.key for pod in most if pod.gpus == width})
                 for width in sorted({pod.gpus for pod in most})]
    groups: list[WorkerGroup] = []
    for node, members in specs:
        held = [pod for pod in most if pod.key in members]
        if not held:
            continue
        cpus = math.ceil(node.cpus) if node.cpus else max(1, math.ceil(
            max(pod.cpus for pod in held) - 1e-9))
        groups.append(WorkerGroup(
            name=_unique(_group_name(node), groups), gpus=node.gpus, cpus=cpus,
            replicas=sum(pod.key in members for pod in start), most=len(held),
            labels=tuple(sorted(node.labels.items()))))
    return groups


def cpu_groups(stages: list[StagePlan], worker_cpus: int) -> list[WorkerGroup]:
    """The CPU group: pods of `worker_cpus` (more when one replica needs more) for the replicas
    of the stages without a GPU; none when they reserve no CPU."""
    cpu_stages = [s.resources for s in stages if not s.resources.gpus and s.resources.cpus > 0]
    if not cpu_stages:
        return []
    size = max(worker_cpus, math.ceil(max(s.cpus for s in cpu_stages) - 1e-9))
    start = _bins_needed([to_units(s.cpus) for s in cpu_stages
                          for _ in range(s.replicas.start)], size * RESOLUTION)
    most = _bins_needed([to_units(s.cpus) for s in cpu_stages for _ in range(s.replicas.max)],
                        size * RESOLUTION)
    return [WorkerGroup(name="cpu", replicas=start, most=most, cpus=size)]


def quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity: 17179869184 -> '16Gi'."""
    for unit, scale in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def _demands(gpu_stages: list[tuple[int, StagePlan]], *, extra: bool) -> list[Demand]:
    """The replicas placed at deploy time, or (`extra`) the ones autoscaling may add."""
    demands = []
    for order, stage in gpu_stages:
        replicas = stage.resources.replicas
        indices = range(replicas.start, replicas.max) if extra else range(replicas.start)
        demands += replica_demands(stage.name, stage.resources, order, indices)
    return demands


def _pods(bins: list[Bin], bounded: bool, stages: dict[str, StagePlan]) -> list[Pod]:
    """Used GPUs grouped into pods: by node on a cluster spec; else one pod per GPU, or per
    replica of whole GPUs."""
    gpus: dict[str, int] = {}
    replicas: dict[str, set[tuple[str, int]]] = {}
    for gpu in bins:
        if not gpu.items:
            continue
        first = gpu.items[0][0]
        if bounded:
            key = gpu.node
        elif first.whole:
            key = f"{first.stage}#{first.replica}"
        else:
            key = f"{gpu.node}/{gpu.index}"
        gpus[key] = gpus.get(key, 0) + 1
        replicas.setdefault(key, set()).update((d.stage, d.replica) for d, _ in gpu.items)
    return [Pod(key, count, sum(stages[stage].resources.cpus for stage, _ in replicas[key]))
            for key, count in gpus.items()]


def _bins_needed(amounts: Iterable[int], size: int) -> int:
    """Pods of `size` for these amounts, first-fit decreasing."""
    free: list[int] = []
    for amount in sorted(amounts, reverse=True):
        for index, room in enumerate(free):
            if room >= amount:
                free[index] -= amount
                break
        else:
            free.append(size - amount)
    return len(free)


def _shape(node: NodeSpec) -> tuple[Any, ...]:
    return node.gpus, node.gpu_memory, node.cpus, tuple(sorted(node.labels.items()))


def _group_name(node: NodeSpec) -> str:
    """`gpu-2x24gib`: GPUs per pod and their memory (when known)."""
    memory = f"x{format_bytes(node.gpu_memory)}" if node.gpu_memory else ""
    return k8s_name(f"gpu-{node.gpus}{memory}")


def _unique(name: str, groups: list[WorkerGroup]) -> str:
    taken = {group.name for group in groups}
    suffix = 2
    candidate = name
    while candidate in taken:
        candidate = f"{name}-{suffix}"
        suffix += 1
    return candidate


def _resources(cpus: int, memory: int, gpus: int = 0) -> dict[str, dict[str, str]]:
    amounts = {"cpu": str(cpus), "memory": quantity(memory)}
    limits = amounts | ({"nvidia.com/gpu": str(gpus)} if gpus else {})
    return {"limits": limits, "requests": dict(amounts)}


def _worker(group: WorkerGroup, image: str, memory_per_cpu: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "groupName": group.name,
        "replicas": group.replicas,
        "minReplicas": group.replicas,
        "maxReplicas": group.most,
        "rayStartParams": {},
    }
    if group.labels:
        spec["labels"] = dict(group.labels)
    spec["template"] = {"spec": {"containers": [{
        "name": "ray-worker", "image": image,
        "resources": _resources(group.cpus, group.cpus * memory_per_cpu, group.gpus),
    }]}}
    return spec


def _check_name(name: str, *, given: bool) -> None:
    if len(name) <= MAX_NAME_LENGTH and DNS_1035_LABEL.fullmatch(name):
        return
    raise CompileError(
        f"{name!r} is not a RayService name: KubeRay wants a DNS-1035 label (lowercase letters, "
        f"digits and '-', starting with a letter) of at most {MAX_NAME_LENGTH} characters"
        if given else f"cannot make a RayService name from the pipeline name: {name!r} is not "
        f"a DNS-1035 label (lowercase letters, digits and '-', starting with a letter)",
        pass_name=PASS, hint="pass a valid name, e.g. name='my-pipeline'",
    )

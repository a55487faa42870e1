"""The plan's data: what the executors run and the artifacts are made from.

A pydantic model that round-trips through JSON: a plan read back equals the plan written.
Arguments are templates, tagged JSON written and read only by `templates`. Stage targets are
import paths. A plan compiled in this process also carries a `PlanMemory` beside its data, never
in it: the objects behind the import paths (so classes defined in a test or a notebook run
without being importable), the constants JSON cannot hold, the graph it was compiled from and
its nodes' plan ids. A plan read back from JSON has an empty one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator
from typing_extensions import Self  # typing's from Python 3.11; pydantic depends on it

from ..dag import Graph
from ..errors import CompileError
from . import templates
from .cluster import ClusterSpec
from .profile import CapacityPlan

# "const": a call node replaced by a constant (`args[0]` its template), see `override`;
# "branch": switch, when, split, fallback or shadow (`args[0]` its key, then its arms)
NodeOp = Literal["input", "select", "call", "map", "const", "branch"]


class BatchPlan(BaseModel):
    """One `sg.batch` method's settings, as the user declared them, or as the capacity pass
    planned them (`max_batch_size`, `max_concurrent_batches`, `batch_wait_timeout_s`; the
    `declared_` ones are then the user's). Every executor batches with these
    (`executors.batching.planned`)."""

    model_config = ConfigDict(frozen=True)

    max_batch_size: int
    batch_wait_timeout_s: float
    max_concurrent_batches: int = 1
    batch_size_fn: str | None = None
    declared_max_batch_size: int | None = None
    declared_max_concurrent_batches: int | None = None
    declared_batch_wait_timeout_s: float | None = None

    @property
    def planned(self) -> bool:
        return self.declared_max_batch_size is not None

    @property
    def max_splits(self) -> int:
        """How deep a failing batch is split, at most, to isolate its failing items (both
        executors split it in halves down to single items, `executors.batching`): ceil(log2
        n) for n items, n being at most `max_batch_size` (unless a `batch_size_fn` counts an
        item as less than one)."""
        return (self.max_batch_size - 1).bit_length()


class ReplicaRange(BaseModel):
    """How many replicas Serve runs of a deployment, its defaults applied: `start` at deploy
    time (what `serve.run` waits for), and the range autoscaling keeps it in. A fixed count
    has `start == min == max`; with `num_replicas="auto"` an unset `max_replicas` is 100."""

    model_config = ConfigDict(frozen=True)

    start: int = 1
    min: int = 1
    max: int = 1
    autoscaling: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaRange:
        if not self.min <= self.start <= self.max:
            raise ValueError(f"replicas out of order: min {self.min}, start {self.start}, "
                             f"max {self.max}")
        return self


class StageResources(BaseModel):
    """The resources pass's facts about one deployment, computed once from its options and
    read by every later pass and output (the packer, fusion, explain, the Serve config, the
    RayService, the diagram, the launcher): how many replicas, and what one reserves as Ray
    counts it (`num_cpus` unset is Serve's 1 CPU; `num_gpus` unset is none).

    `gpus` is None for a stage that gives only `gpu_memory` in a plan compiled without a
    cluster spec: its fraction needs the GPUs' size. Such a plan runs in-process and in tests
    (where a fake stands in for the stage); what places replicas on GPUs (serving, the Serve
    config, the RayService) refuses it, naming the stage (`resources.require_gpu_fractions`)."""

    model_config = ConfigDict(frozen=True)

    replicas: ReplicaRange = ReplicaRange()
    cpus: float = 1.0               # per replica
    gpus: float | None = 0.0        # per replica: declared, or derived from gpu_memory (None:
                                    # not derivable without a cluster spec, see above)
    gpu_memory: int | None = None   # bytes one replica uses on its GPU(s), when declared
                                    # (a multiplexed stage: per model x models_per_replica)
    gpus_from_memory: bool = False  # `gpus` derived (or to be) from gpu_memory
    models_per_replica: int = 1     # an @sg.multiplexed stage's max_models_per_replica

    @property
    def uses_gpu(self) -> bool:
        """A replica reserves a GPU or part of one, its fraction known or not."""
        return self.gpus is None or self.gpus > 0


class MultiplexPlan(BaseModel):
    """An `@sg.multiplexed` stage's loader, as the user declared it."""

    model_config = ConfigDict(frozen=True)

    loader: str                     # the method's name
    max_models_per_replica: int


class StagePlan(BaseModel):
    """One Serve deployment: an actor group of a class stage, a function stage, or the driver."""

    model_config = ConfigDict(frozen=True)

    name: str
    role: Literal["stage", "driver"] = "stage"
    kind: Literal["class", "function", "driver"]
    import_path: str | None = None
    init_args: list[Any] = []
    init_kwargs: dict[str, Any] = {}
    methods: list[str] = []
    batching: dict[str, BatchPlan] = {}
    multiplexed: MultiplexPlan | None = None  # its model loader (`sg.multiplexed`)
    options: dict[str, Any] = {}    # what the user set, in Ray's names: Serve fills in the rest
    resources: StageResources = StageResources()  # as Serve counts them, defaults filled in
    fuse: bool | None = None
    timeout_s: float | None = None  # bound on each call (a stream: on each chunk's wait)
    max_retries: int = 0            # calls retried after a failure or a timeout
    limit_reason: str = ""          # why servegraph chose its max_ongoing_requests, if it did
    site: str = ""
    fused_into: str | None = None   # the deployment it runs inside (the driver), see `fuse`
    fusion: str = ""                # why it was fused, or why not


class PlacedReplica(BaseModel):
    """One GPU replica on a GPU: its stage, its index among the stage's replicas, its share."""

    model_config = ConfigDict(frozen=True)

    stage: str
    replica: int
    gpus: float                # the fraction (or 1.0 per GPU of a multi-GPU replica)
    memory: int | None = None  # bytes it may use on this GPU


class GpuSlot(BaseModel):
    """One GPU of the cluster and the replicas the plan puts on it."""

    model_config = ConfigDict(frozen=True)

    node: str
    index: int
    memory: int | None = None
    replicas: list[PlacedReplica] = []
    fraction_used: float = 0.0
    memory_used: int | None = None


class Headroom(BaseModel):
    """An autoscaled GPU stage: replicas placed at deploy time, its maximum, and how many more
    fit on the GPUs left over."""

    model_config = ConfigDict(frozen=True)

    stage: str
    placed: int
    max_replicas: int
    fits: int


class GpuLayout(BaseModel):
    """The pack pass's output: which replicas share which GPU."""

    model_config = ConfigDict(frozen=True)

    bounded: bool                 # False: no cluster spec, GPUs counted as needed
    gpus: list[GpuSlot]
    headroom: list[Headroom] = []
    lower_bound: int = 0          # ceil(sum of GPU shares): no packing can use fewer

    @property
    def used(self) -> int:
        return sum(1 for gpu in self.gpus if gpu.replicas)

    def sharing(self) -> list[list[str]]:
        """Per used GPU, the sorted stage names of its replicas: the planned sharing."""
        return [sorted(r.stage for r in gpu.replicas) for gpu in self.gpus if gpu.replicas]


class BranchPlan(BaseModel):
    """How a branch node picks the arm a request takes (see `dag.control`). Its node's `args`
    are the key's template, then one template per arm, in the order of `arms`."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["switch", "when", "split", "fallback", "shadow"]
    name: str                   # unique in the plan: messages, traces, a split's weights
    arms: list[str]             # labels: 'en' and default, then/otherwise, variant names, ...
    cases: list[Any] = []       # switch: the case values of its first len(cases) arms
    default: bool = False       # switch: its last arm is the default
    weights: list[float] = []   # split: per arm, as compiled (the driver's user_config may
                                # change them on a running application)
    sticky: bool = False        # split: drawn by a hash of its key, not at random
    seed: int | None = None     # split without a key: its random generator's seed
    forced: str | None = None   # every request takes this arm (a test's `testing.route`)

    @property
    def lazy_arms(self) -> list[int]:
        """The arms (indexes into `arms`) that run only when taken: all of them, except a
        fallback's primary and both of a shadow's."""
        if self.kind == "shadow":
            return []
        return [1] if self.kind == "fallback" else list(range(len(self.arms)))


class MapPlan(BaseModel):
    """An `sg.map` node's fan-out: elements per call to the target's deployment on Serve
    (`chunk_size`: None chooses per request from the width and the replicas), and the most
    elements one request may map over (`max_width`: the map's own, else the global default
    read once, at compile time)."""

    model_config = ConfigDict(frozen=True)

    chunk_size: int | None = None
    max_width: int


class NodePlan(BaseModel):
    """One step of the schedule. A `lazy` node runs only when a branch takes an arm that
    needs it (computed once, by the lower pass, from the branch nodes' `lazy_arms`)."""

    model_config = ConfigDict(frozen=True)

    id: str
    op: NodeOp
    label: str
    stage: str | None = None
    method: str | None = None
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    select: tuple[Literal["attr", "item"], str | int] | None = None
    output_type: str | None = None  # the annotated type of its value, for diagrams
    stream: bool = False            # an async generator stage: its value is a stream of chunks
    branch: BranchPlan | None = None  # op "branch": how it picks its arm
    fanout: MapPlan | None = None   # op "map": its chunks and its width bound
    lazy: bool = False              # started only when a branch's taken arm needs it
    model_id: Any = None            # call, map: the template of its model id (multiplexed)
    site: str = ""

    def templates(self) -> list[Any]:
        """Every template this node reads (its arguments, then its model id): what a walk
        over the plan's edges follows."""
        found = [*self.args, *self.kwargs.values()]
        return found if self.model_id is None else [*found, self.model_id]


@dataclass(frozen=True, eq=False)
class PlanMemory:
    """What a plan compiled in this process keeps beside its data, never in it: objects JSON
    cannot hold. Not part of the plan's JSON, equality or hash, so a plan read back from JSON
    equals the plan written; such a plan has an empty memory and imports its stages by path.
    Passes that make a plan attach a new one (`Plan.with_memory`); nobody mutates one."""

    objects: Mapping[str, Any] = field(default_factory=dict)  # import path -> class/function
    constants: Sequence[Any] = ()       # the `$opaque` constants, by index
    graph: Graph | None = None          # the graph compiled (a Serve config finds its module)
    node_ids: Mapping[int, str] = field(default_factory=dict)  # graph Node.id -> plan node id


class Plan(BaseModel):
    """The compiled plan's data: a schedule of nodes, the deployments and the ingress driver.
    `CompiledPipeline` (in `pipeline`) adds what is made from it: explain, the Serve config and
    the RayService."""

    model_config = ConfigDict(frozen=True)

    name: str
    input_model: str | None = None
    nodes: list[NodePlan]
    outputs: Any
    deployments: list[StagePlan]
    driver: StagePlan
    passes: list[str]
    cluster: ClusterSpec | None = None
    gpu_layout: GpuLayout | None = None
    fuse: bool = True  # compiled with fusion on (a Serve config's builder compiles the same)
    timeout_s: float | None = None  # every request's deadline (`sg.Graph(timeout_s=...)`)
    capacity: CapacityPlan | None = None  # planned from a profile (`sg.compile(profile=...)`)

    _memory: PlanMemory = PrivateAttr(default_factory=PlanMemory)

    @property
    def memory(self) -> PlanMemory:
        """What this plan keeps beside its data (see `PlanMemory`)."""
        return self._memory

    def with_memory(self, memory: PlanMemory) -> Self:
        """This plan's data with `memory` beside it (a copy: the plan is immutable)."""
        plan = self.model_copy()
        plan._memory = memory
        return plan

    def __eq__(self, other: object) -> bool:
        """Plans are equal when their data is; the memory beside it is not compared."""
        if not isinstance(other, Plan):
            return NotImplemented
        return type(self) is type(other) and all(
            getattr(self, name) == getattr(other, name) for name in type(self).model_fields)

    def __hash__(self) -> int:
        """From the name, node ids and stage names: what equal plans share, cheap to read."""
        return hash((type(self).__qualname__, self.name, tuple(node.id for node in self.nodes),
                     tuple(stage.name for stage in self.deployments)))

    def served(self) -> list[StagePlan]:
        """The stages deployed as Serve deployments of their own (not fused into another)."""
        return [stage for stage in self.deployments if stage.fused_into is None]

    def fused(self) -> list[StagePlan]:
        """The stages that run inside another deployment (the driver)."""
        return [stage for stage in self.deployments if stage.fused_into is not None]

    def stage(self, name: str) -> StagePlan:
        for stage in self.deployments:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def resolve(self, import_path: str) -> Any:
        """The object behind an import path: kept from compile time, else imported."""
        if import_path in self.memory.objects:
            return self.memory.objects[import_path]
        module_name, _, qualname = import_path.partition(":")
        try:
            value: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                value = getattr(value, part)
        except (ImportError, AttributeError) as exc:
            raise CompileError(
                f"cannot import {import_path!r}: {exc}", pass_name="load",
                hint="stages defined inside a function or in __main__ run from the plan "
                "compiled in the same process; move them to a module to load a saved plan",
            ) from exc
        return value

    def build_stage(self, stage: StagePlan) -> Any:
        """What a stage's calls go to: its class built with its constructor arguments, or its
        function (or an object an override put in its place) as it is."""
        target = self.resolve(stage.import_path or "")
        if stage.kind == "class" and isinstance(target, type):
            args, kwargs = self.init_arguments(stage)
            return target(*args, **kwargs)
        return target

    def init_arguments(self, stage: StagePlan) -> tuple[list[Any], dict[str, Any]]:
        """The constructor arguments of a class stage, decoded."""
        return ([self.decode(a) for a in stage.init_args],
                {k: self.decode(v) for k, v in stage.init_kwargs.items()})

    def input_type(self) -> Any:
        return self.resolve(self.input_model) if self.input_model else None

    def output_stages(self) -> str | None:
        """The stages whose values the output holds (comma-separated), for an output that
        cannot be sent: None where it holds none."""
        ids = set(templates.refs(self.outputs))
        stages = dict.fromkeys(node.stage for node in self.nodes
                               if node.id in ids and node.stage is not None)
        return ", ".join(stages) or None  # type: ignore[arg-type]

    def reads_input(self) -> bool:
        """Whether the graph reads its `InputNode` (lowering keeps an input node only then):
        a request for it must carry a body."""
        return any(node.op == "input" for node in self.nodes)

    def decode(self, template: Any, values: Mapping[str, Any] | None = None) -> Any:
        """An argument template as Python values: refs read from `values`, opaque constants
        from this plan's memory (see `templates.decode`)."""
        return templates.decode(template, values, self.memory.constants)

"""The plan's data: what the executors run and the artifacts are made from.

A pydantic model that round-trips through JSON. Argument templates are tagged JSON:
`{"ref": "n3"}` a node's value, `{"const": v}` a JSON constant, `{"list": [...]}`,
`{"tuple": [...]}`, `{"dict": {...}}`, and `{"opaque": i, "repr": "..."}` for a constant JSON
cannot hold (kept in memory with the plan; a plan read back from JSON cannot run those).
Stage targets are import paths; in memory the plan also keeps the objects themselves, so
classes defined in a test or a notebook run without being importable.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr

from ..errors import CompileError
from .cluster import ClusterSpec

# "const": a call node replaced by a constant (`args[0]` its template), see `override`
NodeOp = Literal["input", "select", "call", "map", "const"]


class BatchPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_batch_size: int
    batch_wait_timeout_s: float
    max_concurrent_batches: int = 1
    batch_size_fn: str | None = None


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
    options: dict[str, Any] = {}
    gpu_memory: int | None = None
    gpus_from_memory: bool = False  # num_gpus derived from gpu_memory by the resources pass
    fuse: bool | None = None
    timeout_s: float | None = None  # bound on each call (a stream: on each chunk's wait)
    max_retries: int = 0            # calls retried after a failure or a timeout
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


class NodePlan(BaseModel):
    """One step of the schedule."""

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
    site: str = ""


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

    _objects: dict[str, Any] = PrivateAttr(default_factory=dict)
    _constants: list[Any] = PrivateAttr(default_factory=list)
    _graph: Any = PrivateAttr(default=None)  # the sg.Graph compiled, when compiled here
    _node_ids: dict[int, str] = PrivateAttr(default_factory=dict)  # graph Node.id -> plan id

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
        if import_path in self._objects:
            return self._objects[import_path]
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

    def decode(self, template: Any, values: dict[str, Any] | None = None) -> Any:
        """Turn an argument template back into Python values (`ref`s read from `values`)."""
        if "opaque" in template:
            index = template["opaque"]
            if index >= len(self._constants):
                raise CompileError(
                    f"the constant {template.get('repr')} was not saved with the plan",
                    pass_name="load",
                    hint="compile the graph in this process, or use JSON-able constants",
                )
            return self._constants[index]
        tag, body = next(iter(template.items()))
        if tag == "ref":
            if values is None:
                raise KeyError(body)
            return values[body]
        if tag == "const":
            return body
        if tag == "list":
            return [self.decode(item, values) for item in body]
        if tag == "tuple":
            return tuple(self.decode(item, values) for item in body)
        if tag == "dict":
            return {key: self.decode(item, values) for key, item in body.items()}
        raise ValueError(f"unknown template tag {tag!r}")

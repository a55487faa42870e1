"""`CompiledPipeline`: the plan the executors run and the artifacts are made from.

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

NodeOp = Literal["input", "select", "call", "map"]


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
    fuse: bool | None = None
    site: str = ""


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
    site: str = ""


class CompiledPipeline(BaseModel):
    """The compiled plan: a schedule of nodes, the deployments and the ingress driver."""

    model_config = ConfigDict(frozen=True)

    name: str
    input_model: str | None = None
    nodes: list[NodePlan]
    outputs: Any
    deployments: list[StagePlan]
    driver: StagePlan
    passes: list[str]

    _objects: dict[str, Any] = PrivateAttr(default_factory=dict)
    _constants: list[Any] = PrivateAttr(default_factory=list)

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

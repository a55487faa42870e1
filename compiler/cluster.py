"""`sg.ClusterSpec`: the GPUs, their memory and the CPUs a plan is packed onto.

Pure data (no Ray): given in Python, parsed from the CLI (`--gpus 4x80GiB`, `--nodes 2
--gpus-per-node 8`), or read from a running Ray cluster by `executors.cluster.detect_cluster`.
Every spec is normalised to a list of nodes; `ClusterSpec(gpus=2, gpu_memory="80GiB")` is one
node with two 80 GiB GPUs.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..dag.options import parse_bytes


def format_bytes(size: int | float | None) -> str:
    """6442450944 -> '6GiB'; 1.5 GiB -> '1.5GiB'."""
    if size is None:
        return "?"
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.4g}{unit}"
    return f"{int(size)}B"


class NodeSpec(BaseModel):
    """One machine: its GPUs (all of one size), CPUs and Ray node labels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    gpus: int = Field(default=0, ge=0)
    gpu_memory: int | None = None
    cpus: float | None = Field(default=None, ge=0)
    labels: dict[str, str] = {}

    @field_validator("gpu_memory", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int | None:
        return None if value is None else parse_bytes(value)


class ClusterSpec(BaseModel):
    """GPUs to pack onto: `ClusterSpec(gpus=2, gpu_memory="80GiB")`, or several nodes:
    `ClusterSpec(nodes=[NodeSpec(gpus=2), NodeSpec(gpus=1)], gpu_memory="24GiB")` (a node's
    own `gpu_memory` wins over the cluster's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: list[NodeSpec] = []

    def __init__(self, *, gpus: int | None = None, gpu_memory: int | str | None = None,
                 cpus: float | None = None, nodes: list[NodeSpec] | None = None,
                 **extra: Any) -> None:
        """What the constructor takes, spelled out for editors and `inspect.signature`
        (pydantic would show the one field, `nodes`); `_normalise` turns the shorthand into
        nodes, so the fields, the JSON form and equality stay `nodes` alone. Anything else
        in `extra` is refused by pydantic, as before."""
        given = {"gpus": gpus, "gpu_memory": gpu_memory, "cpus": cpus, "nodes": nodes}
        super().__init__(**{k: v for k, v in given.items() if v is not None}, **extra)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        gpus, memory, cpus = data.pop("gpus", None), data.pop("gpu_memory", None), \
            data.pop("cpus", None)
        nodes = [dict(n) if isinstance(n, dict) else n.model_dump() for n in
                 data.get("nodes") or []]
        if not nodes:
            if gpus is None and cpus is None:
                raise ValueError("a cluster spec needs gpus=..., cpus=... or nodes=[...]")
            nodes = [{"gpus": gpus or 0, "cpus": cpus}]
        elif gpus is not None and gpus != sum(n.get("gpus", 0) for n in nodes):
            raise ValueError(f"gpus={gpus} disagrees with the nodes' GPUs "
                             f"({sum(n.get('gpus', 0) for n in nodes)}); give one or the other")
        for index, node in enumerate(nodes):
            node.setdefault("name", "")
            node["name"] = node["name"] or f"node{index}"
            if node.get("gpu_memory") is None and memory is not None:
                node["gpu_memory"] = memory
        data["nodes"] = nodes
        return data

    @model_validator(mode="after")
    def _names(self) -> ClusterSpec:
        names = [node.name for node in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names repeat: {names}")
        return self

    @classmethod
    def parse(cls, *, gpus: str | int | None = None, nodes: int | None = None,
              gpus_per_node: int | None = None, gpu_memory: str | int | None = None,
              cpus: float | None = None) -> ClusterSpec:
        """The CLI's flags: `gpus="4x80GiB"` (or `4` with `gpu_memory`), `nodes=2,
        gpus_per_node=8`; `cpus` is per node."""
        count: int | None = None
        if isinstance(gpus, str):
            match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\S+))?\s*", gpus)
            if match is None:
                raise ValueError(f"cannot read --gpus {gpus!r}; write e.g. 4x80GiB or 4")
            count = int(match.group(1))
            if match.group(2):
                if gpu_memory is not None and parse_bytes(match.group(2)) != parse_bytes(
                        gpu_memory):
                    raise ValueError(f"--gpus {gpus} disagrees with --gpu-memory {gpu_memory}")
                gpu_memory = match.group(2)
        elif gpus is not None:
            count = int(gpus)
        if nodes is None:
            if gpus_per_node is not None:
                nodes = 1
            else:
                return cls(gpus=count or 0, gpu_memory=gpu_memory, cpus=cpus)
        per_node = gpus_per_node
        if per_node is None:
            if count is None or count % nodes:
                raise ValueError(f"{count} GPUs do not split evenly over {nodes} nodes; "
                                 "give --gpus-per-node")
            per_node = count // nodes
        elif count is not None and count != per_node * nodes:
            raise ValueError(f"--gpus {count} disagrees with {nodes} nodes x {per_node} GPUs")
        return cls(nodes=[NodeSpec(gpus=per_node, cpus=cpus) for _ in range(nodes)],
                   gpu_memory=gpu_memory)

    @property
    def gpus(self) -> int:
        return sum(node.gpus for node in self.nodes)

    @property
    def cpus(self) -> float | None:
        if any(node.cpus is None for node in self.nodes):
            return None
        return sum(node.cpus or 0 for node in self.nodes)

    @property
    def smallest_gpu_memory(self) -> int | None:
        """The memory every GPU has at least (None when some GPU's size is unknown)."""
        sizes = [node.gpu_memory for node in self.nodes if node.gpus]
        if not sizes or any(size is None for size in sizes):
            return None
        return min(sizes)  # type: ignore[type-var]

    def describe(self) -> str:
        parts = []
        for node in self.nodes:
            gpus = f"{node.gpus} x {format_bytes(node.gpu_memory)} GPU" if node.gpus else "no GPU"
            cpus = f", {node.cpus:g} CPU" if node.cpus is not None else ""
            parts.append(f"{node.name}: {gpus}{cpus}")
        return "; ".join(parts)

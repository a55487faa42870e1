"""The compile state: what the passes know about one graph, filled in pass by pass.

validate makes it: the graph, its actor groups in schedule order, each group's unique
deployment name and validated options. resources adds each stage's `StageResources` (the
facts every later pass and output reads), pack the GPU layout, fuse its decision for each
stage; lower turns it all into the plan. Per-stage tables are keyed by the deployment name,
unique in the graph (`name_of` gives a group's); a pass returns a new state, never edits one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from ..dag import ClassNode, DeploymentOptions, DeploymentSpec, Graph
from .cluster import ClusterSpec
from .plan import GpuLayout, StageResources

# an actor group: a bound class (its calls share the group), or a function stage
Group = ClassNode | DeploymentSpec


def spec_of_group(group: Group) -> DeploymentSpec:
    return group.target if isinstance(group, ClassNode) else group


@dataclass(frozen=True)
class FuseDecision:
    """One stage: whether it runs inside the driver, and why (or why not)."""

    fused: bool
    reason: str


class BatchChoice(NamedTuple):
    """An `sg.batch` method's settings as the capacity pass planned them."""

    max_batch_size: int
    max_concurrent_batches: int
    batch_wait_timeout_s: float


@dataclass(frozen=True)
class CompileState:
    """The graph and what the passes so far found out about it (see the module docstring)."""

    graph: Graph
    groups: tuple[Group, ...]                 # actor groups, in schedule order
    names: Mapping[int, str]                  # id(group) -> its unique deployment name
    options: Mapping[str, DeploymentOptions]  # deployment name -> validated options
    # filled in by later passes
    cluster: ClusterSpec | None = None                                       # resources
    resources: Mapping[str, StageResources] = field(default_factory=dict)   # resources
    layout: GpuLayout | None = None                                          # pack
    planned_fusion: Mapping[str, str] = field(default_factory=dict)        # capacity
    planned_batches: Mapping[str, Mapping[str, BatchChoice]] = field(  # capacity, by
        default_factory=dict)                                          # stage and method
    fusion: Mapping[str, FuseDecision] = field(default_factory=dict)        # fuse

    def name_of(self, group: Group) -> str:
        return self.names[id(group)]

    def options_of(self, group: Group) -> DeploymentOptions:
        return self.options[self.name_of(group)]

    def stage_names(self) -> list[str]:
        """The deployment names, in schedule order."""
        return [self.name_of(group) for group in self.groups]

"""The compiler: an ordered list of pure passes from a `sg.Graph` to a `CompiledPipeline`.

validate -> typecheck -> resources -> pack -> fuse -> lower. Each pass lives in its own module; a
failing pass raises a `CompileError` that names itself, the stage and the user's source line.
"""

from __future__ import annotations

from ..dag import Graph
from ..dag.site import user_site
from ..errors import BindError
from .cluster import ClusterSpec, NodeSpec
from .passes.fuse import fuse_pass
from .passes.lower import lower
from .passes.pack import pack_pass
from .passes.resources import resources
from .passes.typecheck import typecheck
from .passes.validate import validate
from .pipeline import CompiledPipeline
from .plan import (
    BranchPlan,
    GpuLayout,
    NodePlan,
    Plan,
    PlanMemory,
    ReplicaRange,
    StagePlan,
    StageResources,
)
from .state import CompileState

PASSES = ("validate", "typecheck", "resources", "pack", "fuse", "lower")


def compile(graph: Graph, cluster: ClusterSpec | None = None, fuse: bool = True
            ) -> CompiledPipeline:
    """Check `graph`, derive each stage's resources, pack its GPU replicas onto `cluster`
    (or count the GPUs it needs without one), fuse its light stages into the driver (unless
    `fuse=False`) and lower it to a plan. Without `cluster` a stage that gives only
    `gpu_memory` keeps its GPU fraction unknown: the plan runs in-process and in tests, and
    serving it or writing its Serve config or RayService asks for the cluster."""
    if not isinstance(graph, Graph):
        raise BindError(
            f"sg.compile needs an sg.Graph, got {type(graph).__name__}", site=user_site(),
            hint="wrap the output node: sg.compile(sg.Graph(out, name='...'))",
        )
    if cluster is not None and not isinstance(cluster, ClusterSpec):
        raise BindError(
            f"cluster= needs an sg.ClusterSpec, got {type(cluster).__name__}", site=user_site(),
            hint="sg.compile(graph, cluster=sg.ClusterSpec(gpus=2, gpu_memory='80GiB'))",
        )
    if not isinstance(fuse, bool):
        raise BindError(f"fuse= needs True or False, got {fuse!r}", site=user_site(),
                        hint="sg.compile(graph, fuse=False) keeps every stage a deployment")
    state: CompileState = validate(graph)
    state = typecheck(state)
    state = resources(state, cluster)
    state = pack_pass(state)
    state = fuse_pass(state, enabled=fuse)
    return lower(state, list(PASSES), fuse)


def as_plan(graph_or_plan: Graph | CompiledPipeline) -> CompiledPipeline:
    """A plan as it is, a graph compiled: what every entry point taking either needs."""
    if isinstance(graph_or_plan, CompiledPipeline):
        return graph_or_plan
    return compile(graph_or_plan)


__all__ = ["PASSES", "BranchPlan", "ClusterSpec", "CompiledPipeline", "GpuLayout", "NodePlan",
           "NodeSpec", "Plan", "PlanMemory", "ReplicaRange", "StagePlan", "StageResources",
           "as_plan", "compile"]

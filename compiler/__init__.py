"""The compiler: an ordered list of pure passes from a `sg.Graph` to a `CompiledPipeline`.

validate -> typecheck -> resources -> capacity -> pack -> fuse -> lower. Each pass lives in its own
module; a failing pass raises a `CompileError` that names itself, the stage and the user's source
line. capacity runs only when a profile is given (`sg.compile(graph, profile=..., target=...)`);
a plan lists the passes that ran.
"""

from __future__ import annotations

from ..dag import Graph
from ..dag.app import App
from ..dag.site import user_site
from ..errors import BindError
from .app import CompiledApp, compile_app
from .cluster import ClusterSpec, NodeSpec
from .passes.capacity import capacity_pass
from .passes.capacity_app import app_planning
from .passes.fuse import fuse_pass
from .passes.lower import lower
from .passes.pack import pack_pass
from .passes.predict import with_predictions
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
from .profile import Profile, Target
from .state import CompileState

PASSES = ("validate", "typecheck", "resources", "capacity", "pack", "fuse", "lower")


def compile(graph: Graph, cluster: ClusterSpec | None = None, fuse: bool = True, *,
            profile: Profile | None = None, target: Target | None = None
            ) -> CompiledPipeline:  # an sg.App: profile= and target= by graph name
    """Check `graph`, derive each stage's resources, pack its GPU replicas onto `cluster`
    (or count the GPUs it needs without one), fuse its light stages into the driver (unless
    `fuse=False`) and lower it to a plan. Without `cluster` a stage that gives only
    `gpu_memory` keeps its GPU fraction unknown: the plan runs in-process and in tests, and
    serving it or writing its Serve config or RayService asks for the cluster.

    With a `profile` (`sg.profile`), the capacity pass chooses each stage's replicas, CPUs
    and request limits to serve `target` (None: the most throughput `cluster` allows, or the
    profiled machine without one) and the plan keeps its predictions (`plan.capacity`).
    An `sg.App` compiles to a `CompiledApp`; planned, it takes a profile and a target per
    graph, by graph name (`passes.capacity_app`)."""
    if isinstance(graph, App):  # several graphs, one application: see `compiler.app`
        if profile is None:
            _check_planning(None, target)
            return compile_app(graph, cluster, fuse, passes_run(False))  # type: ignore[return-value]
        profiles, targets = app_planning(graph, profile, target)  # `passes.capacity_app`
        return compile_app(graph, cluster, fuse, passes_run(True),  # type: ignore[return-value]
                           profiles=profiles, targets=targets)
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
    _check_planning(profile, target)
    state: CompileState = validate(graph)
    state = typecheck(state)
    state = resources(state, cluster)
    decision = None
    if profile is not None:
        state, decision = capacity_pass(state, profile, target, fuse=fuse)
    state = pack_pass(state)
    state = fuse_pass(state, enabled=fuse)
    plan = lower(state, passes_run(decision is not None), fuse)
    if decision is None:
        return plan
    return with_predictions(plan, state, decision)


def passes_run(planned: bool) -> list[str]:
    """The passes a compile runs, as its plan lists them: capacity only with a profile."""
    return [name for name in PASSES if planned or name != "capacity"]


def _check_planning(profile: object, target: object) -> None:
    """`profile=` and `target=` of the right types, and no target without a profile."""
    if profile is not None and not isinstance(profile, Profile):
        raise BindError(f"profile= needs an sg.Profile, got {type(profile).__name__}",
                        site=user_site(), hint="prof = sg.profile(graph, payloads)")
    if target is not None and not isinstance(target, Target):
        raise BindError(f"target= needs an sg.Target, got {type(target).__name__}",
                        site=user_site(), hint="sg.Target(rps=200, p99_ms=300)")
    if target is not None and profile is None:
        raise BindError("target= needs profile=: a target is planned from measured stages",
                        site=user_site(), hint="sg.compile(graph, cluster=..., "
                        "profile=sg.profile(graph, payloads), target=sg.Target(rps=200))")


def as_plan(graph_or_plan: Graph | CompiledPipeline) -> CompiledPipeline:
    """A plan as it is, a graph compiled: what every entry point taking either needs (an
    `sg.App`'s plan is kept too, and an app compiled, for those that take apps)."""
    if isinstance(graph_or_plan, (CompiledPipeline, CompiledApp)):
        return graph_or_plan  # type: ignore[return-value]
    return compile(graph_or_plan)


__all__ = ["PASSES", "BranchPlan", "ClusterSpec", "CompiledApp", "CompiledPipeline",
           "GpuLayout", "NodePlan",
           "NodeSpec", "Plan", "PlanMemory", "Profile", "ReplicaRange", "StagePlan",
           "StageResources", "Target", "as_plan", "compile"]

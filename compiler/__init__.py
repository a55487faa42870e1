"""The compiler: an ordered list of pure passes from a `sg.Graph` to a `CompiledPipeline`.

validate -> typecheck -> lower. Each pass lives in its own module; a failing pass raises a
`CompileError` that names itself, the stage and the user's source line.
"""

from __future__ import annotations

from ..dag import Graph
from ..dag.site import user_site
from ..errors import BindError, CompileError
from .lower import lower
from .plan import CompiledPipeline, NodePlan, StagePlan
from .typecheck import typecheck
from .validate import CheckedGraph, validate

PASSES = ("validate", "typecheck", "lower")


def compile(graph: Graph, cluster: object | None = None) -> CompiledPipeline:
    """Check `graph` and lower it to a plan. `cluster` is reserved for GPU packing."""
    if not isinstance(graph, Graph):
        raise BindError(
            f"sg.compile needs an sg.Graph, got {type(graph).__name__}", site=user_site(),
            hint="wrap the output node: sg.compile(sg.Graph(out, name='...'))",
        )
    if cluster is not None:
        raise CompileError(
            "cluster specs and GPU packing are not built yet", pass_name="pack",
            hint="compile without `cluster=`; GPU fractions are taken from ray_actor_options",
        )
    checked: CheckedGraph = validate(graph)
    checked = typecheck(checked)
    return lower(checked, list(PASSES))


def as_plan(graph_or_plan: Graph | CompiledPipeline) -> CompiledPipeline:
    """A plan as it is, a graph compiled: what every entry point taking either needs."""
    if isinstance(graph_or_plan, CompiledPipeline):
        return graph_or_plan
    return compile(graph_or_plan)


__all__ = ["PASSES", "CompiledPipeline", "NodePlan", "StagePlan", "as_plan", "compile"]

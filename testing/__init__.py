"""servegraph.testing: test a pipeline like a function, on every executor.

- `raises(error)`, `hangs(seconds)`, `returns(value)`: faults, injected through overrides
  (`pipeline.run(graph, payload, faults={Encoder: raises(ValueError("down"))})`);
- `node("label")`: a call node by label or plan id, as an override key (its output replaced by
  a constant); the node object itself works too;
- `route(arm)`: an override's value forcing a branch node's arm (`overrides={lang_switch:
  route("fr")}`, or `{node("switch lang"): route("fr")}`); `Trace.branches` says which arm
  each branch took;
- `override(plan, overrides)`: the plan transformation both executors honour;
- `Trace`, `Span`: one request's nodes, inputs, outputs and timings (`.table()`);
- `PipelineTester`: what the `pipeline` fixture gives; `Golden`, `normalized_plan`: golden
  files of a plan and its diagram.

The pytest plugin (`servegraph.testing.plugin`, loaded through the `pytest11` entry point)
provides the `pipeline`, `golden` and `servegraph_ray` fixtures.
"""

from __future__ import annotations

from ..compiler.passes.override import NodeKey, Route, override
from ..executors.trace import Span, Trace
from .faults import Fault, FaultHung, hangs, raises, returns
from .golden import Golden, normalized_plan
from .tester import EXECUTORS, PipelineTester


def node(label: str) -> NodeKey:
    """An override key for the call node with this label (`"Scorer.scale"`, `"map
    Scorer.score"`) or plan id (`"n4"`): `overrides={node("Scorer.scale"): 1.0}`."""
    return NodeKey(label)


def route(arm: object) -> Route:
    """An override's value sending every request down one arm of a branch node: a switch's
    case (`route("fr")`), a when's True/False, a split's variant name, a fallback's
    `"default"` (its primary never tried) or `"primary"` (never falling back)."""
    return Route(arm)


__all__ = ["EXECUTORS", "Fault", "FaultHung", "Golden", "NodeKey", "PipelineTester", "Route",
           "Span", "Trace", "hangs", "node", "normalized_plan", "override", "raises", "returns",
           "route"]

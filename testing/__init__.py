"""servegraph.testing: test a pipeline like a function, on every executor.

- `raises(error)`, `hangs(seconds)`, `returns(value)`: faults, injected through overrides
  (`pipeline.run(graph, payload, faults={Encoder: raises(ValueError("down"))})`);
- `node("label")`: a call node by label or plan id, as an override key (its output replaced by
  a constant); the node object itself works too;
- `override(plan, overrides)`: the plan transformation both executors honour;
- `Trace`, `Span`: one request's nodes, inputs, outputs and timings (`.table()`);
- `PipelineTester`: what the `pipeline` fixture gives; `Golden`, `normalized_plan`: golden
  files of a plan and its diagram.

The pytest plugin (`servegraph.testing.plugin`, loaded through the `pytest11` entry point)
provides the `pipeline`, `golden` and `servegraph_ray` fixtures.
"""

from __future__ import annotations

from ..compiler.passes.override import NodeKey, override
from ..executors.trace import Span, Trace
from .faults import Fault, FaultHung, hangs, raises, returns
from .golden import Golden, normalized_plan
from .tester import EXECUTORS, PipelineTester


def node(label: str) -> NodeKey:
    """An override key for the call node with this label (`"Scorer.scale"`, `"map
    Scorer.score"`) or plan id (`"n4"`): `overrides={node("Scorer.scale"): 1.0}`."""
    return NodeKey(label)


__all__ = ["EXECUTORS", "Fault", "FaultHung", "Golden", "NodeKey", "PipelineTester", "Span",
           "Trace", "hangs", "node", "normalized_plan", "override", "raises", "returns"]

"""The graph users build: stages, nodes, the input, and `sg.Graph`. Imports neither ray nor
graphviz."""

from .control import Branching, BranchNode, fallback, shadow, split, switch, when
from .deployment import (
    BatchSpec,
    DeploymentSpec,
    batch,
    batch_spec,
    deployment,
    health_check,
    map,
    multiplex_spec,
    multiplexed,
    multiplexed_model_id,
    spec_of,
)
from .graph import Graph
from .nodes import CallNode, CallTarget, ClassNode, InputNode, MethodRef, Node, Op, SelectNode
from .options import DeploymentOptions, parse_bytes

__all__ = [
    "BatchSpec", "BranchNode", "Branching", "CallNode", "CallTarget", "ClassNode",
    "DeploymentOptions", "DeploymentSpec",
    "Graph", "InputNode", "MethodRef", "Node", "Op", "SelectNode", "batch", "batch_spec",
    "deployment", "fallback", "health_check", "map", "multiplex_spec", "multiplexed",
    "multiplexed_model_id", "parse_bytes", "shadow", "spec_of",
    "split", "switch", "when",
]

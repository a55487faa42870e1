"""The graph users build: stages, nodes, the input, and `sg.Graph`. Imports neither ray nor
graphviz."""

from .app import App
from .control import (
    Branching,
    BranchNode,
    fallback,
    is_weight,
    matches_case,
    shadow,
    split,
    switch,
    when,
)
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
from .request import HttpRequest, Upload, takes_raw_request

__all__ = [
    "App", "BatchSpec", "BranchNode", "Branching", "CallNode", "CallTarget", "ClassNode",
    "DeploymentOptions", "DeploymentSpec",
    "Graph", "HttpRequest", "InputNode", "MethodRef", "Node", "Op", "SelectNode", "Upload",
    "batch", "batch_spec",
    "deployment", "fallback", "health_check", "is_weight", "map", "matches_case",
    "multiplex_spec", "multiplexed",
    "multiplexed_model_id", "parse_bytes", "shadow", "spec_of",
    "split", "switch", "takes_raw_request", "when",
]

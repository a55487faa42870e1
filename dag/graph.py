"""`sg.Graph`: the outputs of a pipeline, the input they read, and every node they need."""

from __future__ import annotations

from typing import Any

from ..errors import BindError
from .nodes import ClassNode, InputNode, Node, find_nodes, scope_of, transform
from .site import user_site


class Graph:
    """A pipeline: `outputs` is a node, or a list or dict of nodes (constants may sit beside).

    The graph holds the nodes the outputs reach, in a stable order (dependencies first), and
    every node created inside the same `with sg.InputNode()` block, so the validate pass can
    name the ones that reach no output.
    """

    def __init__(self, outputs: Any, name: str = "pipeline") -> None:
        self.site = user_site()
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise BindError(f"graph name {name!r} must be letters, digits, '_' or '-'",
                            site=self.site, hint='sg.Graph(out, name="search")')
        self.name = name
        self.outputs = transform(outputs, lambda node: node)
        out_nodes = list(find_nodes(self.outputs))
        if not out_nodes:
            raise BindError("the graph's outputs hold no node", site=self.site,
                            hint="pass the node (or list/dict of nodes) the pipeline returns")
        for node in out_nodes:
            if isinstance(node, ClassNode):
                raise BindError(
                    f"output {node.label} is a class bound to its constructor, not a call",
                    stage=node.label, site=node.site,
                    hint=f"return a method call: {node.label.lower()}.method.bind(...)",
                )
        self.nodes: tuple[Node, ...] = tuple(_dependencies_first(out_nodes))
        inputs = [node for node in self.nodes if isinstance(node, InputNode)]
        if len(inputs) > 1:
            raise BindError("the graph reads more than one InputNode", site=inputs[1].site,
                            hint="use one `with sg.InputNode() as inp:` block per graph")
        self.input: InputNode | None = inputs[0] if inputs else None
        self.declared: tuple[Node, ...] = tuple(scope_of(self.input)) if self.input else ()

    def __repr__(self) -> str:
        return f"<sg.Graph {self.name!r}: {len(self.nodes)} nodes>"


def _dependencies_first(roots: list[Node]) -> list[Node]:
    """Every node the roots reach, each after the nodes it reads (iterative DFS, no recursion
    limit for deep pipelines); ClassNodes come before their first call."""
    order: list[Node] = []
    seen: set[int] = set()
    for root in roots:
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if node.id in seen:
                continue
            seen.add(node.id)
            stack.append((node, True))
            deps = node.upstream()
            group = getattr(node.target, "group", None)
            if isinstance(group, ClassNode):
                deps = [group, *deps]
            stack.extend((dep, False) for dep in reversed(deps) if dep.id not in seen)
    return order

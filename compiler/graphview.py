"""A networkx view of a graph's data edges, for the graph algorithms inside passes.

The IR stays our own frozen nodes; this view maps node ids to nodes and is thrown away after
the pass. Class nodes feed the calls on their actor group, so every node's group precedes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import networkx as nx

from ..dag import ClassNode, Node


def data_graph(nodes: Iterable[Node]) -> nx.DiGraph:
    view = nx.DiGraph()
    for node in nodes:
        view.add_node(node.id, node=node)
        for dep in node.upstream():
            view.add_edge(dep.id, node.id)
        group = getattr(node.target, "group", None)
        if isinstance(group, ClassNode):
            view.add_edge(group.id, node.id)
    return view


def schedule(nodes: Iterable[Node]) -> list[Node]:
    """Nodes in a topological order that is stable (ties broken by creation order)."""
    view = data_graph(nodes)
    return [view.nodes[node_id]["node"]
            for node_id in nx.lexicographical_topological_sort(view)]


def heaviest_path(nodes: Iterable[Node], weight: Callable[[Node], float]) -> float:
    """What the heaviest chain of data edges weighs, each node on it `weight(node)`: with a
    node weighing its time, a request's critical path (parallel branches count once)."""
    view = data_graph(nodes)
    best: dict[int, float] = {}
    for node_id in nx.topological_sort(view):
        before = max((best[parent] for parent in view.predecessors(node_id)), default=0.0)
        best[node_id] = before + weight(view.nodes[node_id]["node"])
    return max(best.values(), default=0.0)

"""`sg.Graph`: the outputs of a pipeline, the input they read, and every node they need."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ..errors import BindError, OptionsError, SourceSite
from .nodes import ClassNode, InputNode, Node, find_nodes, scope_of, transform
from .options import SERVEGRAPH_OPTIONS, DeploymentOptions
from .site import user_site

# What the driver cannot take: its name is the graph's, and servegraph's own keys are a
# stage's (the driver is never fused, timed out or retried as a whole; it holds no model, so
# it has no `reconfigure` for a user_config); Serve refuses `version` for every deployment.
NOT_FOR_DRIVER = frozenset({"name", "user_config", "version", *SERVEGRAPH_OPTIONS})


class Graph:
    """A pipeline: `outputs` is a node, or a list or dict of nodes (constants may sit beside).

    The graph holds the nodes the outputs reach, in a stable order (dependencies first), and
    every node created inside the same `with sg.InputNode()` block, so the validate pass can
    name the ones that reach no output.

    `timeout_s` is every request's deadline: past it, the calls still running are cancelled
    and the request fails with a `DeadlineError` (HTTP 504) naming them; a caller may ask for
    less (`deadline_s=`, the `x-request-timeout` header), never more.

    `driver` holds the ingress driver's own Serve options (`{"num_replicas": 2}`, or
    `{"num_replicas": "auto", "autoscaling_config": {...}}`), validated here as a stage's are;
    the lower pass lays them over servegraph's driver defaults. The local executor ignores them.
    """

    def __init__(self, outputs: Any, name: str = "pipeline",
                 driver: Mapping[str, Any] | None = None,
                 timeout_s: float | None = None) -> None:
        self.site = user_site()
        if timeout_s is not None and (isinstance(timeout_s, bool)
                                      or not isinstance(timeout_s, (int, float))
                                      or not 0 < timeout_s < float("inf")):
            raise BindError(f"timeout_s={timeout_s!r}: a request's deadline is a positive "
                            "number of seconds", site=self.site,
                            hint="sg.Graph(out, name=..., timeout_s=2.5), or leave it out")
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise BindError(f"graph name {name!r} must be letters, digits, '_' or '-'",
                            site=self.site, hint='sg.Graph(out, name="search")')
        self.name = name
        self.driver_options = driver_options(driver, f"{name}_driver", self.site)
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


def driver_options(raw: Mapping[str, Any] | None, driver: str,
                   site: SourceSite) -> DeploymentOptions:
    """`sg.Graph(driver=...)` validated: a stage's options less `NOT_FOR_DRIVER`; an error
    names the driver and the graph's line."""
    if raw is None:
        return DeploymentOptions()
    if not isinstance(raw, Mapping):
        raise OptionsError(f"driver= needs a dict of Serve options, got {type(raw).__name__}",
                           stage=driver, site=site, hint='driver={"num_replicas": 2}')
    refused = sorted(NOT_FOR_DRIVER.intersection(raw))
    if refused:
        raise OptionsError(
            f"option {refused[0]!r} does not apply to the driver", stage=driver, site=site,
            hint="the driver takes Serve's options (num_replicas, autoscaling_config, "
            "max_ongoing_requests, ray_actor_options, ...); set the others on a stage")
    try:
        return DeploymentOptions.model_validate(dict(raw))
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(field, list(DeploymentOptions.model_fields), n=1)
            raise OptionsError(f"unknown option {field!r}", stage=driver, site=site,
                               hint=f"did you mean {close[0]!r}?" if close
                               else "the driver takes ray.serve.deployment's keywords") from None
        message = error["msg"].removeprefix("Value error, ")
        raise OptionsError(
            f"option {field}={error.get('input')!r}: {message}" if field
            else f"options: {message}", stage=driver, site=site,
            hint="see ray.serve.deployment for this option's values") from None


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

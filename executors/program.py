"""A compiled plan prepared once for many requests: each node's step, its argument templates
compiled by the plan's one codec (`compiler.templates`) into `refs` (the node values it reads,
in order: the *leaves*) and a `build(leaves)` that rebuilds the user's nesting of lists and
dicts. Serve needs the leaves flat, because it resolves a `DeploymentResponse` only as a
top-level argument. A map's per-element call reads the element as leaf 0 (`ITEM`). A `const`
node (a call node an override replaced by a constant) is a value read from the plan. A branch
node's key and each of its arms are compiled alike (`Arm`), so the core builds an arm's value
only once the arm is taken. A multiplexed call's model id is a leaf too (`Step.model_id`
reads it): the core passes it on like any other, and the runner resolves it. The scheduling
loop that runs a program is `core`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import TypeAdapter, ValidationError

from ..compiler import CompiledPipeline, NodePlan, templates
from ..compiler.templates import Build, BuildCall, RefSlots
from ..dag.nodes import Selector
from ..errors import InputError
from .branches import Routing

ITEM = "<item>"
COMPUTED = ("input", "select", "const")  # nodes the core computes itself, calling no stage


@dataclass(frozen=True)
class Arm:
    """One template of a branch node (its key, or an arm): the refs it reads and its build;
    `ref` is set when the template is one node's value, passed on as it is."""

    refs: tuple[str, ...]
    build: Build
    ref: str | None = None


@dataclass(frozen=True)
class Step:
    """One node, ready to run: the leaves it reads and how to rebuild its arguments."""

    node: NodePlan
    refs: tuple[str, ...] = ()
    build: BuildCall | None = None
    items: Build | None = None            # map: the list it iterates over (from `item_refs`)
    item_refs: tuple[str, ...] = ()
    selector: Selector | None = None
    constant: Any = None                  # const: its value
    key: Arm | None = None                # branch: its key, then its arms
    arms: tuple[Arm, ...] = ()
    model_id: Build | None = None         # multiplexed call: its model id, from the leaves

    @property
    def needs(self) -> tuple[str, ...]:
        """The nodes that must have started before this one starts (a branch's arms start
        only once taken)."""
        if self.key is not None:
            return self.key.refs
        return (*self.refs, *self.item_refs)


class Program:
    """A plan prepared once for many requests: steps with precompiled argument builders."""

    def __init__(self, plan: CompiledPipeline) -> None:
        self.plan = plan
        self.steps = [_prepare(plan, node) for node in plan.nodes]
        self.by_id = {step.node.id: step for step in self.steps}
        refs = RefSlots()
        self.build_outputs = templates.builder(plan.outputs, refs, plan.memory.constants)
        self.output_refs = tuple(refs)
        self.stream_refs = frozenset(node.id for node in plan.nodes if node.stream)
        # the graph's output is one stream: HTTP and `stream()` pass its chunks on as they come
        self.streams = templates.ref_of(plan.outputs) in self.stream_refs
        self.order = {node.id: index for index, node in enumerate(plan.nodes)}
        self.routing = Routing(plan.nodes)  # split weights: the driver's user_config may change
        self.background: set[asyncio.Task[Any]] = set()  # shadows' candidates still running
        eager = [step for step in self.steps if not step.node.lazy]
        # what a request starts at once: first the nodes the core computes (they read only
        # the request), then the calls; between them, the eager maps over the request's own
        # lists are checked, so that one too wide is refused before any stage is called
        self.eager_computed = [step for step in eager if step.node.op in COMPUTED]
        self.eager_calls = [step for step in eager if step.node.op not in COMPUTED]
        self.input_maps = [step for step in self.eager_calls if step.items is not None and all(
            self.by_id[ref].node.op in COMPUTED for ref in step.item_refs)]
        model = plan.input_type()
        self._input_adapter = TypeAdapter(model) if model is not None else None

    async def drain(self, within_s: float = 60.0) -> None:
        """Wait for the shadow candidates still running (a blocking local call's loop ends
        with the request: their results would be lost half-way), at most `within_s`: one
        still running then is cancelled (a hung candidate must not hang its caller)."""
        if not self.background:
            return
        _, late = await asyncio.wait(list(self.background), timeout=within_s)
        for task in late:
            task.cancel()

    def validate_input(self, payload: Any) -> Any:
        if self._input_adapter is None:
            return payload
        try:
            return self._input_adapter.validate_python(payload)
        except ValidationError as exc:
            errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                      for e in exc.errors(include_url=False, include_context=False,
                                          include_input=False)]
            raise InputError(f"request body does not fit {self.plan.input_model}: "
                             f"{input_problems(errors)}", errors=errors) from None


def input_problems(errors: Sequence[dict[str, Any]]) -> str:
    """Pydantic's field errors in a few words each, by error type: `missing reviews`,
    `unexpected extra`, `invalid top_k (int_parsing)` (pydantic's full sentences stay in
    `InputError.errors`)."""
    problems = []
    for error in errors:
        where = ".".join(map(str, error["loc"])) or "body"
        if error["type"] == "missing":
            problems.append(f"missing {where}")
        elif error["type"] == "extra_forbidden":
            problems.append(f"unexpected {where}")
        else:
            problems.append(f"invalid {where} ({error['type']})")
    return ", ".join(problems)


def _prepare(plan: CompiledPipeline, node: NodePlan) -> Step:
    """One node's step: its argument templates compiled by the codec, once for all requests."""
    if node.op == "input":
        return Step(node)
    if node.op == "select":
        return Step(node, refs=tuple(templates.refs(node.args[0])),
                    selector=Selector(*node.select))
    if node.op == "const":
        return Step(node, constant=plan.decode(node.args[0]))
    constants = plan.memory.constants
    if node.op == "branch":
        key, *arms = (_arm(template, constants) for template in node.args)
        return Step(node, key=key, arms=tuple(arms))
    refs = RefSlots()
    if node.op == "map":
        item_refs = RefSlots()
        items = templates.builder(node.args[0], item_refs, constants)
        refs.slot(ITEM)
        model_id = _model_id(node, refs, constants)
        build = templates.call_builder([templates.ref(ITEM), *node.args[1:]], node.kwargs,
                                       refs, constants)
        return Step(node, tuple(refs), build, items, tuple(item_refs), model_id=model_id)
    model_id = _model_id(node, refs, constants)
    build = templates.call_builder(node.args, node.kwargs, refs, constants)
    return Step(node, tuple(refs), build, model_id=model_id)


def _model_id(node: NodePlan, refs: RefSlots, constants: Sequence[Any]) -> Build | None:
    """A multiplexed call's model id, read from the leaves like an argument (compiled before
    the arguments: their builder then never takes the leaves for the arguments as they are)."""
    if node.model_id is None:
        return None
    return templates.builder(node.model_id, refs, constants)


def holds(leaf: Any, kinds: type | tuple[type, ...]) -> bool:
    """Whether a leaf is, or is a list holding, a future of `kinds` (a runner's futures are
    leaves themselves, or a map's list of them)."""
    return isinstance(leaf, kinds) or (
        isinstance(leaf, list) and any(isinstance(value, kinds) for value in leaf))


async def awaited(leaf: Any, kinds: type | tuple[type, ...]) -> Any:
    """A leaf with its futures of `kinds` (itself, or those in its list) awaited."""
    if isinstance(leaf, kinds):
        return await leaf
    if holds(leaf, kinds):
        return list(await asyncio.gather(*(awaited(value, kinds) for value in leaf)))
    return leaf


def _arm(template: Any, constants: Sequence[Any]) -> Arm:
    refs = RefSlots()
    build = templates.builder(template, refs, constants)
    return Arm(tuple(refs), build, templates.ref_of(template))


def checked_items(step: Step, items: Any) -> list[Any] | tuple[Any, ...]:
    """A map's elements: a list (or tuple) no longer than the map's `max_width`, else the
    caller's error naming the map (a 422: no stage is called for it)."""
    node = step.node
    if not isinstance(items, (list, tuple)):
        raise InputError(
            f"{node.label} ({node.site}) maps over a list, got {type(items).__name__}",
            errors=[{"loc": [node.label], "msg": "not a list", "type": "list_type"}])
    limit = node.fanout.max_width if node.fanout is not None else len(items)
    if len(items) > limit:
        raise InputError(
            f"{node.label} ({node.site}) takes at most {limit} elements per request, got "
            f"{len(items)} (its max_width; SERVEGRAPH_MAX_MAP_WIDTH sets every map's default)",
            errors=[{"loc": [node.label], "msg": f"more than {limit} elements",
                     "type": "too_long"}])
    return items


class Runner(Protocol):
    def call(self, step: Step, leaves: list[Any]) -> Any:
        """Start one call of `step`'s stage; return its value or a future of this runner."""

    def is_future(self, value: Any) -> bool: ...

    async def resolve(self, value: Any) -> Any:
        """Await one future of this runner to its value."""

    def on_error(self, error: BaseException, request_id: str | None) -> BaseException:
        """Turn a runner's failure into a servegraph error (a StageError naming the stage)."""

    def discard(self, value: Any) -> None:
        """The request failed: cancel this future if it still runs, and retrieve its error."""

    def open(self, stream: Any) -> AsyncIterator[Any]:
        """Start reading a stream this runner's `call` gave for a streaming node."""

    def map(self, step: Step, items: Sequence[Any], rest: list[Any]) -> Any:
        """Start a map's calls, one per element (`rest`: the leaves after the element): a
        list of their values or futures, or one future of the whole list (elements sent in
        chunks). A failure names the element's index."""


class Observer(Protocol):
    """Watches one request as `execute` runs it: the hooks a trace needs, so the core calls
    whatever the caller attaches without importing it."""

    def wrap(self, runner: Runner, nodes: Sequence[NodePlan]) -> Runner:
        """The runner `execute` calls instead of `runner` (to see every call it makes)."""

    def computed(self, node: NodePlan, value: Any) -> None:
        """A node the core computed itself: the input, a selection, a constant."""

    def branched(self, node: NodePlan, arm: str, reason: str | None) -> None:
        """A branch node took `arm` (a fallback's `default`: `reason` says what failed)."""

    def finish(self, values: dict[str, Any], output: Any, error: BaseException | None) -> None:
        """The request ended: every node's value as far as it is known, and the output (None
        for an opened stream) or the servegraph error."""

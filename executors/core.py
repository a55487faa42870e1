"""The one scheduling core: walk a compiled plan's schedule for one request.

Runners differ only in how they call a stage (as Dask's `get_async` is parameterised by
`submit`). `execute` walks the nodes in schedule order and hands each call to the runner
*without awaiting it*: the runner returns a value or a future of its own (an asyncio task
locally, a `DeploymentResponse` on Serve), and futures flow straight into downstream calls.
The core awaits only what control flow needs: the list a map iterates over, and the outputs.
A node whose arguments wait on such an await is deferred into a task of its own, so the
independent branches after it are still dispatched at once.

A streaming node (an async generator stage) gives a stream of this runner (the generator
itself locally, an unstarted call on Serve) that flows, unread, into the one node that
consumes it chunk by chunk, or out of `stream()` to the caller. Awaited as an output by
`execute`, a stream is read to the end and its chunks returned as a list.

Arguments are precompiled per node, by the plan's one template codec (`compiler.templates`),
into `refs` (the node values it reads, in order: the *leaves*) and a `build(leaves)` that
rebuilds the user's nesting of lists and dicts. Serve
needs the leaves flat, because it resolves a `DeploymentResponse` only as a top-level argument.
A map's per-element call reads the element as leaf 0 (`ITEM`). A `const` node (a call node an
override replaced by a constant) is a value the core reads from the plan.

An `Observer` the caller passes (a trace: `trace.Tracer`) wraps the runner and sees every
node's value and the request's end; the core knows only the protocol, never who implements it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import TypeAdapter, ValidationError

from ..compiler import CompiledPipeline, NodePlan, templates
from ..compiler.templates import Build, BuildCall, RefSlots
from ..dag.nodes import Selector
from ..errors import InputError

ITEM = "<item>"


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


class Observer(Protocol):
    """Watches one request as `execute` runs it: the hooks a trace needs, so the core calls
    whatever the caller attaches without importing it."""

    def wrap(self, runner: Runner, nodes: Sequence[NodePlan]) -> Runner:
        """The runner `execute` calls instead of `runner` (to see every call it makes)."""

    def computed(self, node: NodePlan, value: Any) -> None:
        """A node the core computed itself: the input, a selection, a constant."""

    def finish(self, values: dict[str, Any], output: Any, error: BaseException | None) -> None:
        """The request ended: every node's value as far as it is known, and the output (None
        for an opened stream) or the servegraph error."""


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
        model = plan.input_type()
        self._input_adapter = TypeAdapter(model) if model is not None else None

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
    refs = RefSlots()
    if node.op == "map":
        item_refs = RefSlots()
        items = templates.builder(node.args[0], item_refs, constants)
        refs.slot(ITEM)
        build = templates.call_builder([templates.ref(ITEM), *node.args[1:]], node.kwargs,
                                       refs, constants)
        return Step(node, tuple(refs), build, items, tuple(item_refs))
    build = templates.call_builder(node.args, node.kwargs, refs, constants)
    return Step(node, tuple(refs), build)


class _Deferred:
    """A node the core itself must wait for (it reads a map's list); holds an asyncio task."""

    __slots__ = ("task",)

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task


async def stream(program: Program, payload: Any, runner: Runner,
                 request_id: str | None = None) -> AsyncGenerator[Any, None]:
    """Run one request of a pipeline whose output is a stream; yield its chunks as they come.
    A failure before the first chunk or mid-stream raises the servegraph error naming the
    stage."""
    source = await execute(program, payload, runner, request_id, open_stream=True)
    try:
        async for chunk in source:
            yield chunk
    except Exception as exc:
        raise runner.on_error(exc, request_id) from None


async def execute(program: Program, payload: Any, runner: Runner,
                  request_id: str | None = None, *, open_stream: bool = False,
                  observer: Observer | None = None) -> Any:
    """Run one request through the plan with `runner`; return the outputs' values (streams
    read to the end), or with `open_stream` the output stream itself, opened. An `observer`
    (a trace) wraps the runner and is told every computed node and the request's end."""
    values: dict[str, Any] = {}
    deferred: list[asyncio.Task[Any]] = []
    output: Any = None
    error: BaseException | None = None
    if observer is not None:
        runner = observer.wrap(runner, program.plan.nodes)
    try:
        _dispatch(program, payload, runner, values, deferred, observer)
        if open_stream:
            return runner.open(await _settle(values[program.output_refs[0]], runner))
        results = [await _collect(values[ref], runner) if ref in program.stream_refs
                   else await _value(values[ref], runner) for ref in program.output_refs]
        output = program.build_outputs(results)
        return output
    except BaseException as exc:
        _abandon(deferred, values, runner)
        error = runner.on_error(exc, request_id)
        raise error from None
    finally:
        if observer is not None:
            observer.finish({key: _known(value) for key, value in values.items()}, output,
                            error)


def _dispatch(program: Program, payload: Any, runner: Runner, values: dict[str, Any],
              deferred: list[asyncio.Task[Any]], observer: Observer | None) -> None:
    """Start every node in schedule order, awaiting nothing: the core computes the input,
    selections and constants; a call goes to the runner at once, or, when it must wait for
    the core (a map's list, a deferred argument), into a task of its own in `deferred`."""
    for step in program.steps:
        node = step.node
        if node.op in _COMPUTED:
            values[node.id] = _computed(program, step, payload, values)
            if observer is not None:
                observer.computed(node, values[node.id])
            continue
        leaves = [values.get(ref) for ref in step.refs]
        mapped = None if step.items is None else _map_now(step, values, leaves, runner)
        if mapped is not None:
            values[node.id] = mapped
        elif step.items is not None or any(isinstance(v, _Deferred) for v in leaves):
            task = asyncio.ensure_future(_run_later(step, values, runner))
            deferred.append(task)
            values[node.id] = _Deferred(task)
        else:
            values[node.id] = runner.call(step, leaves)


_COMPUTED = ("input", "select", "const")


def _computed(program: Program, step: Step, payload: Any, values: dict[str, Any]) -> Any:
    """The value of a node the core computes itself, from the request or the plan."""
    if step.node.op == "input":
        return program.validate_input(payload)
    if step.node.op == "select":
        return _select(step, values[step.refs[0]])
    return step.constant


def _abandon(deferred: list[asyncio.Task[Any]], values: dict[str, Any], runner: Runner
             ) -> None:
    """The request failed: stop the core's own waits (retrieving the errors of finished ones)
    and discard the runner's futures still in flight."""
    for task in deferred:
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()
    _discard_all(values.values(), runner)


def _known(value: Any) -> Any:
    """A deferred node's value when its task finished well (for the trace), else as it is."""
    if isinstance(value, _Deferred) and value.task.done() and not value.task.cancelled() \
            and value.task.exception() is None:
        return value.task.result()
    return value


def _discard_all(values: Any, runner: Runner) -> None:
    for value in values:
        if isinstance(value, list):
            _discard_all(value, runner)
        elif runner.is_future(value):
            runner.discard(value)


def _map_now(step: Step, values: dict[str, Any], leaves: list[Any],
             runner: Runner) -> list[Any] | None:
    """A map over a list already known (e.g. from the request): its calls start now."""
    item_leaves = [values[ref] for ref in step.item_refs]
    if any(isinstance(v, _Deferred) for v in (*item_leaves, *leaves[1:])):
        return None
    items = step.items(item_leaves)  # type: ignore[misc]
    if runner.is_future(items):
        return None
    rest = leaves[1:]
    return [runner.call(step, [item, *rest]) for item in items]


async def _run_later(step: Step, values: dict[str, Any], runner: Runner) -> Any:
    """A call that waits for the core first: a map (its list), or a reader of a deferred."""
    if step.items is not None:
        item_leaves = [await _settle(values[ref], runner) for ref in step.item_refs]
        items = step.items(item_leaves)
        if runner.is_future(items):
            items = await runner.resolve(items)
        rest = [await _settle(values[ref], runner) for ref in step.refs[1:]]
        return [runner.call(step, [item, *rest]) for item in items]
    leaves = [await _settle(values[ref], runner) for ref in step.refs]
    return runner.call(step, leaves)


async def _settle(value: Any, runner: Runner) -> Any:
    """Wait for the core's own deferral only; runner futures pass on unawaited."""
    return await value.task if isinstance(value, _Deferred) else value


async def _collect(value: Any, runner: Runner) -> list[Any]:
    """A stream output, read to the end: its chunks in order."""
    return [chunk async for chunk in runner.open(await _settle(value, runner))]


async def _value(value: Any, runner: Runner) -> Any:
    """The concrete value of a leaf: deferrals and runner futures awaited, lists of them too."""
    value = await _settle(value, runner)
    if runner.is_future(value):
        return await runner.resolve(value)
    if isinstance(value, list) and any(runner.is_future(v) for v in value):
        return list(await asyncio.gather(*(_value(v, runner) for v in value)))
    return value


def _select(step: Step, value: Any) -> Any:
    try:
        return step.selector.apply(value)  # type: ignore[union-attr]
    except (KeyError, IndexError, AttributeError, TypeError) as exc:
        field = step.node.label
        raise InputError(
            f"request body has no {field.partition('.')[2] or field} ({type(exc).__name__}: "
            f"{exc})", errors=[{"loc": [field], "msg": "field required", "type": "missing"}],
        ) from None

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

Control flow stays lazy. A node the plan marks `lazy` (one that only untaken arms of a
branch might need) is not started with the others: a branch node is a task of the core that
awaits its key, picks an arm (`branches.Routing`), then starts the lazy nodes that arm needs,
in schedule order, and passes the arm's value on (a single node's future unawaited, like any
other). A fallback awaits its primary and, should it fail, starts its default instead; a
shadow passes its primary's value on and watches its candidate in the background, logging
its failure, while the request goes on without it.

Each node's arguments were compiled once into leaves and a builder (`program`).

An `Observer` the caller passes (a trace: `trace.Tracer`) wraps the runner and sees every
node's value, each arm taken and the request's end; the core knows only the protocol, never
who implements it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from ..compiler import NodePlan
from ..errors import DeadlineError, InputError
from .deadline import DEADLINE, request_budget
from .program import COMPUTED, Observer, Program, Runner, Step, checked_items

logger = logging.getLogger("servegraph")


class _Deferred:
    """A node the core itself must wait for (it reads a map's list, or is a branch); holds
    an asyncio task."""

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
                  observer: Observer | None = None, deadline_s: float | None = None) -> Any:
    """Run one request through the plan with `runner`; return the outputs' values (streams
    read to the end), or with `open_stream` the output stream itself, opened. An `observer`
    (a trace) wraps the runner and is told every computed node, each arm taken and the
    request's end. The request's budget is `deadline_s` capped by the graph's `timeout_s`:
    every call it starts sees the deadline (`deadline`), and past it (and a moment's grace
    for a stage's own deadline error to arrive, naming it) the calls still running are
    cancelled and a `DeadlineError` names them."""
    if observer is not None:
        runner = observer.wrap(runner, program.plan.nodes)
    request = _Request(program, payload, runner, request_id, observer)
    budget = request_budget(deadline_s, program.plan.timeout_s)
    token = None if budget is None else DEADLINE.set(time.time() + budget)
    output: Any = None
    error: BaseException | None = None
    try:
        async with asyncio.timeout(None if budget is None else budget + DEADLINE_GRACE_S
                                   ) as scope:
            output = await request.outputs(open_stream)
        return output
    except BaseException as exc:
        failure = exc
        if budget is not None and scope.expired():
            failure = DeadlineError(program.plan.name, budget, request.running(),
                                    request_id=request_id)
        request.abandon()
        error = runner.on_error(failure, request_id)
        raise error from None
    finally:
        if token is not None:
            DEADLINE.reset(token)
        if observer is not None:
            observer.finish({key: _known(value) for key, value in request.values.items()},
                            None if open_stream else output, error)


DEADLINE_GRACE_S = 0.05  # past the deadline, for a stage's own deadline error to arrive first


class _Request:
    """One request's walk: the value (or future) of each node started so far, and the core's
    own tasks (deferred calls and branches) to stop should the request fail."""

    def __init__(self, program: Program, payload: Any, runner: Runner,
                 request_id: str | None, observer: Observer | None) -> None:
        self.program = program
        self.payload = payload
        self.runner = runner
        self.request_id = request_id
        self.observer = observer
        self.values: dict[str, Any] = {}
        self.deferred: list[asyncio.Task[Any]] = []

    async def outputs(self, open_stream: bool) -> Any:
        """Start the request and await its outputs (or open its output stream)."""
        self.start_eager()
        program, values, runner = self.program, self.values, self.runner
        if open_stream:
            return runner.open(await _settle(values[program.output_refs[0]]))
        results = [await _collect(values[ref], runner) if ref in program.stream_refs
                   else await _value(values[ref], runner) for ref in program.output_refs]
        return program.build_outputs(results)

    def running(self) -> list[str]:
        """The stages of the calls started and not known to have ended (a Serve response
        that was never awaited is counted as running: the driver cannot tell)."""
        running = []
        for node_id, value in self.values.items():
            node = self.program.by_id[node_id].node
            pending = [v for v in (value if isinstance(value, list) else [value])
                       if self.runner.is_future(v) or isinstance(v, _Deferred)]
            if node.stage and any(not _ended(v) for v in pending):
                running.append(node.stage)
        return list(dict.fromkeys(running))

    def start_eager(self) -> None:
        """Start every node that is not lazy, in schedule order, awaiting nothing: the ones
        the core computes first (they read only the request), so that a map over the
        request's own list is checked (`checked_items`) before any stage is called."""
        program = self.program
        for step in program.eager_computed:
            self.start(step)
        for step in program.input_maps:
            checked_items(step, step.items([self.values[ref] for ref in step.item_refs]))  # type: ignore[misc]
        for step in program.eager_calls:
            self.start(step)

    def start(self, step: Step) -> None:
        """Start one node whose inputs have started: the core computes the input, selections
        and constants; a call goes to the runner at once, or, when it must wait for the core
        (a map's list, a deferred argument), into a task of its own; a branch is a task."""
        node, values = step.node, self.values
        if node.op in COMPUTED:
            values[node.id] = _computed(self.program, step, self.payload, values)
            if self.observer is not None:
                self.observer.computed(node, values[node.id])
            return
        if step.key is not None:
            values[node.id] = self._branch(step)
            return
        leaves = [values.get(ref) for ref in step.refs]
        try:
            mapped = None if step.items is None else _map_now(step, values, leaves, self.runner)
            if mapped is not None:
                values[node.id] = mapped  # a list of calls, or one future of them all
            elif step.items is not None or any(isinstance(v, _Deferred) for v in leaves):
                values[node.id] = self._defer(_run_later(step, values, self.runner))
            else:
                values[node.id] = self.runner.call(step, leaves)
        except Exception as exc:  # a sync stage that failed inline: its value is the failure,
            values[node.id] = _failed(exc)  # raised where it is awaited (a fallback catches it)

    def start_needed(self, refs: Sequence[str]) -> None:
        """Start the lazy nodes `refs` need that have not started, dependencies first (in
        schedule order; iterative, for deep arms)."""
        missing: set[str] = set()
        stack = [ref for ref in refs if ref not in self.values]
        while stack:
            ref = stack.pop()
            if ref in missing:
                continue
            missing.add(ref)
            stack.extend(dep for dep in self.program.by_id[ref].needs
                         if dep not in self.values and dep not in missing)
        for ref in sorted(missing, key=self.program.order.__getitem__):
            self.start(self.program.by_id[ref])

    def _defer(self, work: Any) -> _Deferred:
        task = asyncio.ensure_future(work)
        self.deferred.append(task)
        return _Deferred(task)

    def _branch(self, step: Step) -> Any:
        kind = step.node.branch.kind  # type: ignore[union-attr]
        if kind == "shadow":
            primary, candidate = step.arms
            self._watch(step.node, candidate)
            if self.observer is not None:
                self.observer.branched(step.node, "primary", None)
            return self.values[primary.ref]  # type: ignore[index]
        if kind == "fallback":
            return self._defer(self._fallback(step))
        return self._defer(self._choose(step))

    async def _choose(self, step: Step) -> Any:
        """A switch, when or split: its key's value picks the arm that then starts."""
        key = step.key.build([await _value(self.values[ref], self.runner)  # type: ignore[union-attr]
                              for ref in step.key.refs])  # type: ignore[union-attr]
        index = self.program.routing.choose(step.node, key)
        if self.observer is not None:
            self.observer.branched(step.node, step.node.branch.arms[index], None)  # type: ignore[union-attr]
        return await self._take(step.arms[index])

    async def _fallback(self, step: Step) -> Any:
        """The primary's value, or, when it fails (or times out), the default's."""
        primary, default = step.arms
        node = step.node
        forced = node.branch.forced  # type: ignore[union-attr]
        if forced == "primary":  # a test's route: the primary's failure is the request's
            return await self._take(primary)
        if forced != "default":
            try:
                value = await _value(await self._take(primary), self.runner)
            except Exception as exc:
                reason = str(self.runner.on_error(exc, self.request_id))
                logger.warning("%s (%s) took its default: %s", node.label, node.site, reason)
            else:
                if self.observer is not None:
                    self.observer.branched(node, "primary", None)
                return value
        else:
            reason = "forced by testing.route"
        if self.observer is not None:
            self.observer.branched(node, "default", reason)
        return await self._take(default)

    async def _take(self, arm: Any) -> Any:
        """An arm's value: its lazy nodes started; one node's value passed on as it is (a
        runner's future unawaited), a nesting of values built from the resolved leaves."""
        self.start_needed(arm.refs)
        if arm.ref is not None:
            return await _settle(self.values[arm.ref])
        return arm.build([await _value(self.values[ref], self.runner) for ref in arm.refs])

    def _watch(self, node: NodePlan, candidate: Any) -> None:
        """A shadow's candidate: awaited in the background, its failure logged, its result
        dropped; the program holds the task until it ends."""
        async def watch() -> None:
            try:
                await _value(self.values[candidate.ref], self.runner)
            except Exception as exc:
                logger.warning("%s (%s): the candidate failed, the answer is the "
                               "primary's: %s", node.label, node.site,
                               self.runner.on_error(exc, self.request_id))

        task = asyncio.ensure_future(watch())
        background = self.program.background
        background.add(task)
        task.add_done_callback(background.discard)

    def abandon(self) -> None:
        """The request failed: stop the core's own waits (retrieving the errors of finished
        ones) and discard the runner's futures still in flight."""
        for task in self.deferred:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()
        _discard_all(self.values.values(), self.runner)


def _ended(value: Any) -> bool:
    """A call that ended by itself (one cancelled just now, by the deadline's own
    cancellation of what the request awaited, was still running)."""
    if isinstance(value, _Deferred):
        value = value.task
    return isinstance(value, asyncio.Future) and value.done() and not value.cancelled()


def _failed(error: Exception) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


def _computed(program: Program, step: Step, payload: Any, values: dict[str, Any]) -> Any:
    """The value of a node the core computes itself, from the request or the plan."""
    if step.node.op == "input":
        return program.validate_input(payload)
    if step.node.op == "select":
        return _select(step, values[step.refs[0]])
    return step.constant


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
             runner: Runner) -> Any:
    """A map over a list already known (e.g. from the request): its calls start now."""
    item_leaves = [values[ref] for ref in step.item_refs]
    if any(isinstance(v, _Deferred) for v in (*item_leaves, *leaves[1:])):
        return None
    items = step.items(item_leaves)  # type: ignore[misc]
    if runner.is_future(items):
        return None
    return runner.map(step, checked_items(step, items), leaves[1:])


async def _run_later(step: Step, values: dict[str, Any], runner: Runner) -> Any:
    """A call that waits for the core first: a map (its list), or a reader of a deferred."""
    if step.items is not None:
        item_leaves = [await _settle(values[ref]) for ref in step.item_refs]
        items = step.items(item_leaves)
        if runner.is_future(items):
            items = await runner.resolve(items)
        rest = [await _settle(values[ref]) for ref in step.refs[1:]]
        return runner.map(step, checked_items(step, items), rest)
    leaves = [await _settle(values[ref]) for ref in step.refs]
    return runner.call(step, leaves)


async def _settle(value: Any) -> Any:
    """Wait for the core's own deferral only; runner futures pass on unawaited."""
    return await value.task if isinstance(value, _Deferred) else value


async def _collect(value: Any, runner: Runner) -> list[Any]:
    """A stream output, read to the end: its chunks in order."""
    return [chunk async for chunk in runner.open(await _settle(value))]


async def _value(value: Any, runner: Runner) -> Any:
    """The concrete value of a leaf: deferrals and runner futures awaited, lists of them too."""
    value = await _settle(value)
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

"""The local runner: stages as Python objects in this process, on asyncio.

Same concurrency as Serve: every async call is its own task, so independent branches overlap;
a sync stage whose inputs are ready runs inline (as Serve runs sync methods on the replica's
loop). `sg.batch` is honoured by the one batcher of every executor (`executors.batcher`); strict
mode checks every value crossing an edge (`strict`). On Serve, the driver runs the stages fused
into it with this runner too.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...compiler import CompiledPipeline, NodePlan, StagePlan
from ...dag import batch_spec
from ...dag.deployment import require_model_id, serving_model
from ...errors import PipelineError, StageError
from .. import tracing
from ..batcher import Batcher
from ..batching import planned
from ..guard import CallPolicy, attempt, call_guarded, chunks_guarded
from ..program import Program, Step, awaited, holds
from .strict import EdgeChecker

# a context each call of a node runs in (`LocalRunner(watch=...)`)
Watch = Callable[[NodePlan], contextlib.AbstractContextManager[Any]]


def build_instances(plan: CompiledPipeline, stages: list[StagePlan] | None = None
               ) -> dict[str, Any]:
    """Stage name -> the object its calls go to (a class instance, or a function), for every
    stage of the plan or only `stages` (the Serve driver builds the stages fused into it)."""
    built: dict[str, Any] = {}
    for stage in plan.deployments if stages is None else stages:
        try:
            built[stage.name] = obj = plan.build_stage(stage)
            if stage.options.get("user_config") is not None:
                reconfigure(obj, stage.options["user_config"])
        except PipelineError:
            raise
        except Exception as exc:
            raise StageError(stage.name, f"constructor failed: {exc}", site=stage.site,
                             error_type=type(exc).__name__) from exc
    return built


def reconfigure(obj: Any, user_config: Any) -> None:
    """Serve's start of a replica with `user_config`: `reconfigure(user_config)` right after
    `__init__`, awaited when async (on a loop of its own in a worker thread where a loop runs
    here already: this is still the constructor's time). An override without `reconfigure`
    (a fake put in the stage's place) is left as it is; the validate pass checked the stage."""
    method = getattr(obj, "reconfigure", None)
    if method is None:
        return
    result = method(user_config)
    if not inspect.isawaitable(result):
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_awaited(result))
        return
    with ThreadPoolExecutor(max_workers=1) as worker:
        worker.submit(asyncio.run, _awaited(result)).result()


async def _awaited(result: Awaitable[Any]) -> Any:
    return await result


class LocalRunner:
    """Calls the stages in `instances` in this process (all of them locally; on Serve, the
    driver's fused ones)."""

    def __init__(self, program: Program, instances: dict[str, Any], strict: bool,
                 watch: Watch | None = None) -> None:
        """`watch(node)`: a context each call of `node` runs in (the Serve driver's metrics
        of the stages fused into it); traces add a span around each call when on."""
        self.watch = watch
        self.traced = tracing.enabled()  # read once: a process's switch (see `tracing`)
        self.watched = watch is not None or self.traced  # calls run in `_watching`
        self.calls: dict[str, _Call] = {}
        batchers: dict[tuple[str, str], Batcher] = {}  # one per method, as on Serve
        for step in program.steps:
            node = step.node
            if node.stage is None or node.stage not in instances:
                continue
            obj = instances[node.stage]
            fn = getattr(obj, node.method) if node.method else obj
            spec = batch_spec(getattr(fn, "__func__", fn))
            batcher = None
            if spec is not None:
                spec = planned(spec, program.plan, node.stage, node.method)
                batcher = batchers.setdefault((node.stage, node.method or ""),
                                              Batcher(fn, spec))
            policy = CallPolicy.of(program.plan, node)
            self.calls[node.id] = _Call(step, fn, strict, batcher, policy)

    def call(self, step: Step, leaves: list[Any]) -> Any:
        call = self.calls[step.node.id]
        if call.is_stream:  # unstarted: it runs as its one reader reads it
            return call.run_stream(leaves)
        return self._start(call, leaves, None)

    def map(self, step: Step, items: Sequence[Any], rest: list[Any]) -> list[Any]:
        """One call per element, each started as `call` starts one; a failure names the
        element's index."""
        call = self.calls[step.node.id]
        return [self._start(call, [item, *rest], index) for index, item in enumerate(items)]

    def _start(self, call: _Call, leaves: list[Any], index: int | None) -> Any:
        watched = self.watched
        if call.is_async or call.guarded or any(holds(leaf, asyncio.Future) for leaf in leaves):
            running = call.run_async(leaves, index)
            return asyncio.get_running_loop().create_task(
                self._watched(call, running) if watched else running)
        if not watched:
            return call.run_sync(leaves, index)
        with self._watching(call.step.node):
            return call.run_sync(leaves, index)

    async def run_ready(self, step: Step, leaves: list[Any]) -> Any:
        """One call of `step` on values awaited already (the Serve driver's fused stages
        reading deployments' responses), watched as `call` watches one."""
        call = self.calls[step.node.id]
        running = call.run_async(leaves)
        if not self.watched:
            return await running
        return await self._watched(call, running)

    async def _watched(self, call: _Call, running: Awaitable[Any]) -> Any:
        with self._watching(call.step.node):
            return await running

    def _watching(self, node: NodePlan) -> contextlib.AbstractContextManager[Any]:
        """A call's span (`tracing`, when on) and its `watch`."""
        if not self.traced and self.watch is not None:  # the Serve driver's usual case
            return self.watch(node)  # its metrics' plain context object: no generator
        return self._traced(node)

    @contextlib.contextmanager
    def _traced(self, node: NodePlan) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if self.traced:
                stack.enter_context(tracing.call_span(node.stage or "", node))
            if self.watch is not None:
                stack.enter_context(self.watch(node))
            yield

    def is_future(self, value: Any) -> bool:
        return isinstance(value, asyncio.Future)

    async def resolve(self, value: Any) -> Any:
        return await value

    def on_error(self, error: BaseException, request_id: str | None) -> BaseException:
        if isinstance(error, PipelineError) and request_id and hasattr(error, "request_id"):
            error.request_id = request_id
        return error

    def open(self, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return stream

    def discard(self, value: asyncio.Future[Any]) -> None:
        if not value.done():
            value.cancel()
        elif not value.cancelled():
            value.exception()


class _Call:
    """One call node bound to its stage object: how to invoke it, batched or not, checked or
    not, and how its failures are named."""

    def __init__(self, step: Step, fn: Callable[..., Any], strict: bool,
                 batcher: Batcher | None, policy: CallPolicy) -> None:
        self.step = step
        self.fn = fn
        self.build = step.build
        self.batcher = batcher
        self.policy = policy
        self.guarded = policy.active  # timeout or retries: through `guard`, in a task
        self.is_async = self.batcher is not None or inspect.iscoroutinefunction(fn)
        self.is_stream = step.node.stream
        self.checker = EdgeChecker(step, fn) if strict else None

    def model(self, leaves: list[Any]) -> contextlib.AbstractContextManager[Any]:
        """Where the call runs: with its model id (`sg.multiplexed_model_id()`) when it is
        multiplexed; the leaves are values by now."""
        if self.step.model_id is None:
            return contextlib.nullcontext()
        try:
            return serving_model(require_model_id(self.step.model_id(leaves)))
        except ValueError as exc:
            raise self._failed(exc) from None

    def run_sync(self, leaves: list[Any], index: int | None = None) -> Any:
        try:
            args, kwargs = self.build(leaves)  # type: ignore[misc]
            if self.checker:
                args, kwargs = self.checker.arguments(args, kwargs)
            serving = self.model(leaves)
            try:
                with serving:
                    result = self.fn(*args, **kwargs)
            except Exception as exc:
                raise self._failed(exc) from exc
            return self.checker.result(result) if self.checker else result
        except StageError as exc:
            if index is not None:
                exc.at_element(index)
            raise

    async def run_async(self, leaves: list[Any], index: int | None = None) -> Any:
        # an upstream failure surfaces as it is (not as this element's)
        leaves = [await awaited(leaf, asyncio.Future) for leaf in leaves]
        try:
            with self.model(leaves):
                return await self._run_ready(leaves)
        except StageError as exc:
            if index is not None:
                exc.at_element(index)
            raise

    async def _run_ready(self, leaves: list[Any]) -> Any:
        if self.guarded:
            return await self.run_guarded(leaves)
        if not self.is_async:
            return self.run_sync(leaves)
        args, kwargs = self.build(leaves)  # type: ignore[misc]
        if self.checker:
            args, kwargs = self.checker.arguments(args, kwargs)
        try:
            if self.batcher is not None:
                result = await self.batcher(*args, **kwargs)
            else:
                result = await self.fn(*args, **kwargs)
        except Exception as exc:
            raise self._failed(exc) from exc
        return self.checker.result(result) if self.checker else result

    async def run_guarded(self, leaves: list[Any]) -> Any:
        """A call under its stage's timeout and retries (see `guard`): the same arguments for
        every attempt; a sync stage with a timeout runs in a thread of its own."""
        args, kwargs = self.build(leaves)  # type: ignore[misc]
        if self.checker:
            args, kwargs = self.checker.arguments(args, kwargs)
        if self.batcher is not None:
            invoke = attempt(self.batcher, args, kwargs, is_async=True, timeout_s=None)
        else:
            invoke = attempt(self.fn, args, kwargs, is_async=self.is_async,
                             timeout_s=self.policy.timeout_s)
        result = await call_guarded(invoke, self.policy, self._failed)
        return self.checker.result(result) if self.checker else result

    async def run_stream(self, leaves: list[Any]) -> AsyncIterator[Any]:
        """The stage's async generator, chunk by chunk (an upstream stream's failure passes
        through naming its own stage); with `timeout_s`, each chunk's wait is bounded."""
        leaves = [await awaited(leaf, asyncio.Future) for leaf in leaves]
        args, kwargs = self.build(leaves)  # type: ignore[misc]
        if self.checker:
            args, kwargs = self.checker.arguments(args, kwargs)
        chunks = self.fn(*args, **kwargs)
        if self.policy.timeout_s is not None:
            chunks = chunks_guarded(chunks, self.policy, self._failed)
        try:
            async for chunk in chunks:
                yield self.checker.chunk(chunk) if self.checker else chunk
        except Exception as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: Exception) -> PipelineError:
        """What a call raised, as a servegraph error: one the stage raised itself (an
        `sg.InputError`, the caller's fault: a 422) passes as it is, as on Serve."""
        node = self.step.node
        if isinstance(exc, PipelineError):
            return exc
        return StageError(node.stage or node.label, str(exc), site=node.site,
                          error_type=type(exc).__name__)

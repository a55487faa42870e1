"""The local runner: stages as Python objects in this process, on asyncio.

Same concurrency as Serve: every async call is its own task, so independent branches overlap;
a sync stage whose inputs are ready runs inline (as Serve runs sync methods on the replica's
loop). `sg.batch` is honoured by a small batcher with Serve's semantics. Strict mode checks
every value crossing an edge against the consumer's annotation (and the producer's return
annotation) and round-trips it through pickle, as a Ray hop would.
"""

from __future__ import annotations

import asyncio
import inspect
import pickle
import typing
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from pydantic import PydanticUserError, TypeAdapter, ValidationError

from ..compiler import CompiledPipeline, StagePlan, as_plan
from ..compiler.override import override
from ..compiler.types import parameter_types, return_type, type_name
from ..dag import BatchSpec, Graph, batch_spec
from ..errors import EdgeTypeError, PipelineError, StageError
from .core import Program, Step, execute, stream
from .guard import CallPolicy, attempt, call_guarded, chunks_guarded
from .trace import Trace


class LocalExecutor:
    """Run a graph or plan in-process. `overrides` swaps stages: `{Encoder: FakeEncoder}` (a
    class or function, or the stage's name as key; a class is built with the stage's own
    constructor arguments, an object is used as it is), or a call node's output for a
    constant (`{node: value}`); see `compiler.override`."""

    def __init__(self, graph_or_plan: Graph | CompiledPipeline, *,
                 overrides: Mapping[Any, Any] | None = None, strict: bool = False) -> None:
        plan = override(as_plan(graph_or_plan), overrides or {})
        self.plan = plan
        self.program = Program(plan)
        self.strict = strict
        self._runner = _LocalRunner(self.program, _instances(plan), strict)

    async def run(self, payload: Any = None, request_id: str | None = None) -> Any:
        """The outputs' values (a streamed output read to the end: its list of chunks)."""
        return await execute(self.program, payload, self._runner, request_id)

    async def trace(self, payload: Any = None, request_id: str | None = None) -> Trace:
        """Run one request recording every node's inputs, output, start and duration; the
        trace holds the `output`, or the servegraph `error` (kept, not raised)."""
        trace = Trace(self.plan.name, executor="local-strict" if self.strict else "local")
        try:
            await execute(self.program, payload, self._runner, request_id, trace=trace)
        except PipelineError:
            pass
        return trace

    def stream(self, payload: Any = None, request_id: str | None = None) -> AsyncIterator[Any]:
        """The chunks of a pipeline whose output is a stream, as its last stage yields them."""
        if not self.program.streams:
            raise PipelineError(f"pipeline {self.plan.name!r} does not stream: its output is "
                                "not an async generator stage; use run()")
        return stream(self.program, payload, self._runner, request_id)

    def call(self, payload: Any = None) -> Any:
        """Blocking `run`, for scripts and sync tests (not from inside a running event loop)."""
        if not _loop_running():
            return asyncio.run(self.run(payload))
        raise PipelineError("LocalExecutor.call()/sg.run_local() block, and an event loop is "
                            "running here: use `await sg.LocalExecutor(graph).run(payload)`")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def run_local(graph_or_plan: Graph | CompiledPipeline, payload: Any = None, *,
              overrides: Mapping[Any, Any] | None = None, strict: bool = False) -> Any:
    """Run one request in-process, no Ray: what the served pipeline would return."""
    return LocalExecutor(graph_or_plan, overrides=overrides, strict=strict).call(payload)


def _instances(plan: CompiledPipeline, stages: list[StagePlan] | None = None
               ) -> dict[str, Any]:
    """Stage name -> the object its calls go to (a class instance, or a function), for every
    stage of the plan or only `stages` (the Serve driver builds the stages fused into it)."""
    built: dict[str, Any] = {}
    for stage in plan.deployments if stages is None else stages:
        try:
            built[stage.name] = plan.build_stage(stage)
        except PipelineError:
            raise
        except Exception as exc:
            raise StageError(stage.name, f"constructor failed: {exc}", site=stage.site,
                             error_type=type(exc).__name__) from exc
    return built


class _LocalRunner:
    """Calls the stages in `instances` in this process (all of them locally; on Serve, the
    driver's fused ones)."""

    def __init__(self, program: Program, instances: dict[str, Any], strict: bool) -> None:
        self.calls: dict[str, _Call] = {}
        batchers: dict[tuple[str, str], _Batcher] = {}  # one per method, as on Serve
        for step in program.steps:
            node = step.node
            if node.stage is None or node.stage not in instances:
                continue
            obj = instances[node.stage]
            fn = getattr(obj, node.method) if node.method else obj
            spec = batch_spec(getattr(fn, "__func__", fn))
            batcher = None
            if spec is not None:
                batcher = batchers.setdefault((node.stage, node.method or ""),
                                              _Batcher(fn, spec))
            policy = CallPolicy.of(program.plan, node)
            self.calls[node.id] = _Call(step, fn, strict, batcher, policy)

    def call(self, step: Step, leaves: list[Any]) -> Any:
        call = self.calls[step.node.id]
        if call.is_stream:  # unstarted: it runs as its one reader reads it
            return call.run_stream(leaves)
        if call.is_async or call.guarded or any(_pending(leaf) for leaf in leaves):
            return asyncio.get_running_loop().create_task(call.run_async(leaves))
        return call.run_sync(leaves)

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


def _pending(leaf: Any) -> bool:
    return isinstance(leaf, asyncio.Future) or (
        isinstance(leaf, list) and any(isinstance(v, asyncio.Future) for v in leaf))


async def _ready(leaf: Any) -> Any:
    if isinstance(leaf, asyncio.Future):
        return await leaf
    if isinstance(leaf, list) and any(isinstance(v, asyncio.Future) for v in leaf):
        return list(await asyncio.gather(*(_ready(v) for v in leaf)))
    return leaf


class _Call:
    """One call node bound to its stage object: how to invoke it, batched or not, checked or
    not, and how its failures are named."""

    def __init__(self, step: Step, fn: Callable[..., Any], strict: bool,
                 batcher: _Batcher | None, policy: CallPolicy) -> None:
        self.step = step
        self.fn = fn
        self.build = step.build
        self.batcher = batcher
        self.policy = policy
        self.guarded = policy.active  # timeout or retries: through `guard`, in a task
        self.is_async = self.batcher is not None or inspect.iscoroutinefunction(fn)
        self.is_stream = step.node.stream
        self.checker = _EdgeChecker(step, fn) if strict else None

    def run_sync(self, leaves: list[Any]) -> Any:
        args, kwargs = self.build(leaves)  # type: ignore[misc]
        if self.checker:
            args, kwargs = self.checker.arguments(args, kwargs)
        try:
            result = self.fn(*args, **kwargs)
        except Exception as exc:
            raise self._failed(exc) from exc
        return self.checker.result(result) if self.checker else result

    async def run_async(self, leaves: list[Any]) -> Any:
        leaves = [await _ready(leaf) for leaf in leaves]
        if self.guarded:
            return await self.run_guarded(leaves)
        if not self.is_async:
            return self.run_sync(leaves)
        args, kwargs = self.build(leaves)  # type: ignore[misc]
        if self.checker:
            args, kwargs = self.checker.arguments(args, kwargs)
        try:
            if self.batcher is not None:
                result = await self.batcher.submit(args, kwargs)
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
            invoke = attempt(self.batcher.submit, (args, kwargs), {}, is_async=True,
                             timeout_s=None)
        else:
            invoke = attempt(self.fn, args, kwargs, is_async=self.is_async,
                             timeout_s=self.policy.timeout_s)
        result = await call_guarded(invoke, self.policy, self._failed)
        return self.checker.result(result) if self.checker else result

    async def run_stream(self, leaves: list[Any]) -> AsyncIterator[Any]:
        """The stage's async generator, chunk by chunk (an upstream stream's failure passes
        through naming its own stage); with `timeout_s`, each chunk's wait is bounded."""
        leaves = [await _ready(leaf) for leaf in leaves]
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

    def _failed(self, exc: Exception) -> StageError:
        node = self.step.node
        if isinstance(exc, StageError):
            return exc
        return StageError(node.stage or node.label, str(exc), site=node.site,
                          error_type=type(exc).__name__)


class _EdgeChecker:
    """Strict mode for one call node: annotations enforced with pydantic in strict mode, and
    every value pickled and unpickled as a Ray hop would."""

    def __init__(self, step: Step, fn: Callable[..., Any]) -> None:
        unbound = getattr(fn, "__func__", fn)
        is_method = unbound is not fn
        self.node = step.node
        self.signature = inspect.signature(fn)
        self.params = {name: _Check(tp) for name, tp in
                       parameter_types(unbound, is_method).items()}
        produced = return_type(unbound)
        self.returns = None if produced is Any else _Check(produced)

    def arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        streams: dict[int, AsyncIterator[Any]] = {}  # a stream is not pickled: its chunks are
        args = tuple(_stash(value, streams) for value in args)
        kwargs = {key: _stash(value, streams) for key, value in kwargs.items()}
        args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
        args = tuple(_unstash(value, streams) for value in args)
        kwargs = {key: _unstash(value, streams) for key, value in kwargs.items()}
        bound = self.signature.bind_partial(*args, **kwargs)
        for name, value in list(bound.arguments.items()):
            check = self.params.get(name)
            if check is None:
                continue
            if inspect.isasyncgen(value):
                bound.arguments[name] = self._checked_stream(value, check, name)
            else:
                self._check(check, value, f"parameter {name!r}")
        return bound.args, bound.kwargs

    async def _checked_stream(self, source: AsyncIterator[Any], check: _Check,
                              name: str) -> AsyncIterator[Any]:
        element = _Check(_element(check.annotation))
        async for chunk in source:
            chunk = pickle.loads(pickle.dumps(chunk))
            self._check(element, chunk, f"a chunk of parameter {name!r}")
            yield chunk

    def chunk(self, value: Any) -> Any:
        """One chunk a streaming stage yields, checked against its AsyncIterator[T]."""
        value = pickle.loads(pickle.dumps(value))
        if self.returns is not None:
            self._check(_Check(_element(self.returns.annotation)), value, "a chunk")
        return value

    def result(self, value: Any) -> Any:
        value = pickle.loads(pickle.dumps(value))
        if self.returns is not None:
            self._check(self.returns, value, "return value")
        return value

    def _check(self, check: _Check, value: Any, what: str) -> None:
        problem = check.problem(value)
        if problem is not None:
            raise EdgeTypeError(
                self.node.stage or self.node.label,
                f"strict mode: {what} of {self.node.label} expects "
                f"{type_name(check.annotation)}, got {type(value).__name__} {value!r:.80}"
                f" ({problem})",
                site=self.node.site, error_type="EdgeTypeError",
            )


class _Stashed:
    """Where a stream sat among a call's arguments while the rest was pickled."""

    def __init__(self, key: int) -> None:
        self.key = key


def _stash(value: Any, streams: dict[int, AsyncIterator[Any]]) -> Any:
    if inspect.isasyncgen(value):
        streams[len(streams)] = value
        return _Stashed(len(streams) - 1)
    return value


def _unstash(value: Any, streams: dict[int, AsyncIterator[Any]]) -> Any:
    return streams[value.key] if isinstance(value, _Stashed) else value


def _element(annotation: Any) -> Any:
    """T of AsyncIterator[T] (Any when not parameterised)."""
    args = typing.get_args(annotation)
    return args[0] if args else Any


class _Check:
    """One annotation enforced: by pydantic in strict mode, or, for a type pydantic has no
    schema for (a numpy array, a plain TypedDict before Python 3.12), by `isinstance` on its
    class."""

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        self.adapter: TypeAdapter[Any] | None = None
        origin = typing.get_origin(annotation) or annotation
        self.fallback: type | None = origin if isinstance(origin, type) else None
        try:
            self.adapter = TypeAdapter(annotation)
        except PydanticUserError:
            if typing.is_typeddict(annotation):
                self.fallback = dict

    def problem(self, value: Any) -> str | None:
        if self.adapter is not None:
            try:
                self.adapter.validate_python(value, strict=True)
            except ValidationError as exc:
                return str(exc.errors(include_url=False)[0]["msg"])
            return None
        if self.fallback is not None and not isinstance(value, self.fallback):
            return f"not an instance of {self.fallback.__name__}"
        return None




class _Batcher:
    """Serve's batching semantics for the local runner: concurrent single calls are queued and
    the method is called on lists (one per positional argument), at `max_batch_size` or after
    `batch_wait_timeout_s`, with at most `max_concurrent_batches` in flight."""

    def __init__(self, fn: Callable[..., Any], spec: BatchSpec) -> None:
        self.fn = fn
        self.spec = spec
        self.loop: asyncio.AbstractEventLoop | None = None

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.slots = asyncio.Semaphore(self.spec.max_concurrent_batches)
        self.running: set[asyncio.Task[None]] = set()

    def submit(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            self._reset(loop)
        if kwargs:
            args = (*args, *kwargs.values())
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append((args, future))
        if self._size(self.pending) >= self.spec.max_batch_size:
            self._flush()
        elif self.timer is None:
            self.timer = loop.call_later(self.spec.batch_wait_timeout_s, self._flush)
        return future

    def _size(self, pending: list[tuple[tuple[Any, ...], Any]]) -> int:
        if self.spec.batch_size_fn is None:
            return len(pending)
        return self.spec.batch_size_fn([args[0] for args, _ in pending])

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        while self.pending and (not batch or self._size([*batch, self.pending[0]])
                                <= self.spec.max_batch_size):
            batch.append(self.pending.pop(0))
        if batch:
            task = asyncio.ensure_future(self._run(batch))
            self.running.add(task)
            task.add_done_callback(self.running.discard)
        if self.pending and self.loop is not None:
            self.timer = self.loop.call_later(self.spec.batch_wait_timeout_s, self._flush)

    async def _run(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        async with self.slots:
            columns = [list(column) for column in zip(*(args for args, _ in batch))]
            try:
                results = await self.fn(*columns)
                if len(results) != len(batch):
                    raise ValueError(f"a batched method returned {len(results)} results for "
                                     f"{len(batch)} inputs")
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

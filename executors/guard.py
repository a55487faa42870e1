"""A stage's call under its `timeout_s` and `max_retries`: the one implementation both runners
wrap around the user's code (locally in `_Call`, on Serve inside `StageReplica`, where the call
actually runs: the driver passes responses on unawaited, so it never sees a call start or end).

- Each attempt is bounded by `timeout_s`, cut to what is left of the request's deadline
  (`deadline`); one that runs past it fails with `StageTimeoutError` (HTTP 504), or, past
  the request's deadline, with `DeadlineError` naming the stage (never retried). The
  attempt is cancelled. A synchronous stage cannot be interrupted, so with a timeout it
  runs in a daemon thread of its own: the caller stops waiting at the timeout and the
  thread finishes in the background (its result dropped).
- A call that raises, or times out, is made again, up to `max_retries` times, with the same
  arguments (so only for idempotent stages); the last error surfaces, saying how many
  attempts were made. Errors that are not the stage's own (a servegraph error met on the
  way: strict mode's edge check, an upstream stream's failure) are never retried.
- A streaming stage is never retried (the compiler refuses it); `timeout_s` bounds the wait
  for each chunk, the first one included.

A stage with neither option never comes here (on Serve: unless its request has a deadline):
its calls stay on the runners' fast paths.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..compiler import CompiledPipeline, NodePlan
from ..errors import DeadlineError, StageError, StageTimeoutError
from .deadline import budget

Failed = Callable[[Exception], BaseException]


@dataclass(frozen=True)
class CallPolicy:
    """How one call node's stage is called: its timeout, its retries, and whom to blame."""

    stage: str
    site: str
    timeout_s: float | None = None
    max_retries: int = 0

    @classmethod
    def of(cls, plan: CompiledPipeline, node: NodePlan) -> CallPolicy:
        stage = plan.stage(node.stage or "")
        return cls(stage.name, node.site, stage.timeout_s, stage.max_retries)

    @property
    def active(self) -> bool:
        return self.timeout_s is not None or self.max_retries > 0


async def call_guarded(invoke: Callable[[], Awaitable[Any]], policy: CallPolicy,
                       failed: Failed) -> Any:
    """`await invoke()` (one attempt) under `policy`. `failed` is the runner's own conversion
    of what the user's code raised into a servegraph error."""
    attempt = 1
    while True:
        bound, by_deadline = budget(policy.timeout_s)  # never past the request's deadline
        try:
            return await _bounded(invoke, bound)
        except _TimedOut:
            if by_deadline:
                raise DeadlineError(policy.stage, bound or 0.0, [policy.stage],
                                    left=True) from None
            error: BaseException = StageTimeoutError(
                policy.stage, policy.timeout_s or 0.0, site=policy.site, attempts=attempt)
        except Exception as exc:
            error = failed(exc)
            if type(error) is not StageError or error.stage != policy.stage:
                raise error from None
        if attempt > policy.max_retries:
            if isinstance(error, StageError) and attempt > 1:
                error.with_attempts(attempt)
            raise error from None
        attempt += 1


def attempt(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
            is_async: bool, timeout_s: float | None) -> Callable[[], Awaitable[Any]]:
    """One attempt of a call: an async stage awaited; a sync one called inline, or, with a
    timeout, in a thread of its own (it cannot be interrupted)."""
    if is_async:
        return lambda: fn(*args, **kwargs)
    if timeout_s is not None:
        return lambda: in_thread(fn, *args, **kwargs)

    async def inline() -> Any:
        return fn(*args, **kwargs)

    return inline


async def chunks_guarded(chunks: AsyncIterator[Any], policy: CallPolicy,
                         failed: Failed) -> AsyncIterator[Any]:
    """A streaming stage's chunks, each awaited for at most `policy.timeout_s`."""
    iterator = aiter(chunks)
    while True:
        try:
            chunk = await _bounded(lambda: anext(iterator), policy.timeout_s)
        except StopAsyncIteration:
            return
        except _TimedOut:
            raise StageTimeoutError(policy.stage, policy.timeout_s or 0.0, site=policy.site,
                                    waiting_for="chunk") from None
        except Exception as exc:
            raise failed(exc) from None
        yield chunk


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a synchronous `fn` in a daemon thread of its own and await its result. Unlike the
    loop's default executor, nobody waits for the thread at exit (`asyncio.run`, the
    interpreter), so a call abandoned at its timeout cannot hold up a shutdown."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            result, error = context.run(fn, *args, **kwargs), None
        except BaseException as exc:
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed while the call ran: nobody waits any more
            pass

    threading.Thread(target=work, name=f"servegraph-{getattr(fn, '__name__', 'call')}",
                     daemon=True).start()
    return await future


class _TimedOut(Exception):
    """Our own timeout fired (told apart from a TimeoutError the user's code raised)."""


async def _bounded(invoke: Callable[[], Awaitable[Any]], timeout_s: float | None) -> Any:
    if timeout_s is None:
        return await invoke()
    task = asyncio.ensure_future(invoke())
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise _TimedOut
    return task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()

"""`sg.batch` on every executor: the local runner, the stages fused into a Serve driver and a
stage's Serve replicas all batch through `Batcher`, with the method's `sg.batch` settings (as
planned) and a dynamic batcher's timing; a failing batch is split to isolate its failing items
(`executors.batching`)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from ..dag import BatchSpec
from .batching import Outcome, isolating, settle


class Item(NamedTuple):
    args: tuple[Any, ...]
    future: asyncio.Future[Outcome]


class Batcher:
    """Concurrent single calls are queued and the method is called on lists (one per
    positional argument), with at most `max_concurrent_batches` batches running. A batch is
    formed when its calls reach `max_batch_size`, or once its first call has waited
    `batch_wait_timeout_s` *and* a slot is free: while every slot is busy, calls keep joining
    the next batch. This is a dynamic batcher's rule (Triton's): under load a batch holds what
    arrived while the last ones ran, at low load a call waits at most the timeout. (Serve's
    `serve.batch` closes a batch at the timeout whether or not it can run, so under load its
    batches stay as small as one timeout's arrivals: measured on the ONNX encoder fused into
    two driver replicas, 287-299 texts/s with that rule, 320-364 with this one.)

    A batch that raises is split and re-run within its slot (`batching.isolating`): each call
    gets its own item's value or error. `around` wraps the batch function (a replica's
    batch-size metric). (No batch mixes models: the compiler refuses a `model_id` on a
    batched method's call.)"""

    def __init__(self, fn: Callable[..., Any], spec: BatchSpec,
                 around: Callable[[Any], Any] | None = None) -> None:
        self.fn = fn
        self.run_batch = isolating(fn) if around is None else around(isolating(fn))
        self.spec = spec
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """One call: its item's value, or its item's error raised."""
        return settle(await self.submit(args, kwargs))

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[Item] = []
        self.full: deque[list[Item]] = deque()  # batches at their size, waiting for a slot
        self.timer: asyncio.TimerHandle | None = None
        self.due = False  # the first pending call has waited the timeout
        self.free = self.spec.max_concurrent_batches
        self.running: set[asyncio.Task[None]] = set()

    def submit(self, args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            self._reset(loop)
        if kwargs:
            args = (*args, *kwargs.values())
        future: asyncio.Future[Outcome] = loop.create_future()
        self.pending.append(Item(args, future))
        if self._size(self.pending) >= self.spec.max_batch_size:
            self.full.append(self._take())
            self._dispatch()
        elif self.timer is None and not self.due:
            self.timer = loop.call_later(self.spec.batch_wait_timeout_s, self._expire)
        return future

    def _size(self, items: list[Item]) -> int:
        if self.spec.batch_size_fn is None:
            return len(items)
        return self.spec.batch_size_fn([item.args[0] for item in items])

    def _take(self) -> list[Item]:
        """The next batch of pending calls, oldest first: as many as fit `max_batch_size` (at
        least one). The wait starts again for the calls left."""
        batch: list[Item] = []
        while self.pending and (not batch or self._size([*batch, self.pending[0]])
                                <= self.spec.max_batch_size):
            batch.append(self.pending.pop(0))
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.due = False
        if self.pending and self.loop is not None:
            self.timer = self.loop.call_later(self.spec.batch_wait_timeout_s, self._expire)
        return batch

    def _expire(self) -> None:
        self.timer = None
        self.due = True
        self._dispatch()

    def _dispatch(self) -> None:
        """Start batches while slots are free: full ones first, then the pending calls once
        their wait is over."""
        while self.free > 0:
            if self.full:
                batch = self.full.popleft()
            elif self.pending and self.due:
                batch = self._take()
            else:
                return
            self.free -= 1
            task = asyncio.ensure_future(self._run(batch))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _run(self, batch: list[Item]) -> None:
        """Run one batch in a slot. The slot is given back before the batch's callers are
        answered: the next batch starts its call while this loop answers them (with one slot,
        the model would otherwise idle meanwhile)."""
        columns = [list(column) for column in zip(*(item.args for item in batch))]
        try:
            outcomes: list[Outcome] | Exception = await self.run_batch(*columns)
        except Exception as exc:  # not the items' fault (no result list at all)
            outcomes = exc
        finally:
            self.free += 1
            self._dispatch()
        for index, item in enumerate(batch):
            if item.future.done():
                continue
            if isinstance(outcomes, Exception):
                item.future.set_exception(outcomes)
            else:
                item.future.set_result(outcomes[index])

"""`sg.batch` for the local runner, with Serve's semantics; a failing batch is split to
isolate its failing items (`executors.batching`), as on Serve."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ...dag import BatchSpec
from ..batching import Outcome, isolating, settle


class Batcher:
    """Serve's batching semantics for the local runner: concurrent single calls are queued and
    the method is called on lists (one per positional argument), at `max_batch_size` or after
    `batch_wait_timeout_s`, with at most `max_concurrent_batches` in flight. A batch that
    raises is split and re-run within its slot (`batching.isolating`): each call gets its own
    item's value or error."""

    def __init__(self, fn: Callable[..., Any], spec: BatchSpec) -> None:
        self.fn = fn
        self.run_batch = isolating(fn)
        self.spec = spec
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """One call: its item's value, or its item's error raised."""
        return settle(await self.submit(args, kwargs))

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[tuple[Any, ...], asyncio.Future[Outcome]]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.slots = asyncio.Semaphore(self.spec.max_concurrent_batches)
        self.running: set[asyncio.Task[None]] = set()

    def submit(self, args: tuple[Any, ...], kwargs: dict[str, Any]
               ) -> asyncio.Future[Outcome]:
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            self._reset(loop)
        if kwargs:
            args = (*args, *kwargs.values())
        future: asyncio.Future[Outcome] = loop.create_future()
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
        batch: list[tuple[tuple[Any, ...], asyncio.Future[Outcome]]] = []
        while self.pending and (not batch or self._size([*batch, self.pending[0]])
                                <= self.spec.max_batch_size):
            batch.append(self.pending.pop(0))
        if batch:
            task = asyncio.ensure_future(self._run(batch))
            self.running.add(task)
            task.add_done_callback(self.running.discard)
        if self.pending and self.loop is not None:
            self.timer = self.loop.call_later(self.spec.batch_wait_timeout_s, self._flush)

    async def _run(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Outcome]]]
                   ) -> None:
        """Run one batch in a slot. The slot is given back before the batch's callers are
        answered: the next batch (waiting for it) resumes first and starts its call while
        this loop answers them (with one slot, the model would otherwise idle meanwhile)."""
        async with self.slots:
            columns = [list(column) for column in zip(*(args for args, _ in batch))]
            try:
                outcomes: list[Outcome] | Exception = await self.run_batch(*columns)
            except Exception as exc:  # not the items' fault (no result list at all)
                outcomes = exc
        for index, (_, future) in enumerate(batch):
            if future.done():
                continue
            if isinstance(outcomes, Exception):
                future.set_exception(outcomes)
            else:
                future.set_result(outcomes[index])

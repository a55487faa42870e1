"""The local batcher frees a batch's slot before it answers the batch's callers: with one
slot, the next batch's call starts first (a model would otherwise idle while they resume)."""

from __future__ import annotations

import asyncio

from servegraph.dag import BatchSpec
from servegraph.executors.batcher import Batcher


def test_the_next_batch_starts_before_the_last_ones_callers_resume() -> None:
    events: list[str] = []

    async def double(items: list[int]) -> list[int]:
        events.append(f"batch {items}")
        await asyncio.sleep(0)
        return [item * 2 for item in items]

    async def caller(batcher: Batcher, item: int) -> int:
        value = await batcher(item)
        events.append(f"answered {item}")
        return value

    async def main() -> list[int]:
        batcher = Batcher(double, BatchSpec(max_batch_size=2, batch_wait_timeout_s=5.0))
        return await asyncio.gather(*(caller(batcher, item) for item in range(4)))

    assert asyncio.run(main()) == [0, 2, 4, 6]
    assert events == ["batch [0, 1]", "batch [2, 3]", "answered 0", "answered 1",
                      "answered 2", "answered 3"]


def test_calls_keep_joining_the_next_batch_while_every_slot_is_busy() -> None:
    """A dynamic batcher: the calls made while the one slot runs a batch wait past their
    timeout and go as one batch when the slot frees (Serve's rule would close a batch at each
    timeout); a batch at `max_batch_size` does not wait for a slot's timeout at all."""
    batches: list[list[int]] = []

    async def main() -> list[int]:
        release = asyncio.Event()

        async def echo(items: list[int]) -> list[int]:
            batches.append(items)
            if items == [0]:
                await release.wait()
            return items

        batcher = Batcher(echo, BatchSpec(max_batch_size=4, batch_wait_timeout_s=0.001))
        first = asyncio.ensure_future(batcher(0))
        while not batches:
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher(item)) for item in range(1, 7)]
        await asyncio.sleep(0.05)  # fifty timeouts pass while the slot is busy
        assert batches == [[0]]
        release.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(main()) == list(range(7))
    assert batches == [[0], [1, 2, 3, 4], [5, 6]]


def test_a_full_batch_goes_without_waiting_for_its_timeout() -> None:
    batches: list[list[int]] = []

    async def echo(items: list[int]) -> list[int]:
        batches.append(items)
        return items

    async def main() -> list[int]:
        batcher = Batcher(echo, BatchSpec(max_batch_size=3, batch_wait_timeout_s=3600.0))
        return await asyncio.wait_for(asyncio.gather(*(batcher(item) for item in range(3))),
                                      timeout=60)

    assert asyncio.run(main()) == [0, 1, 2]
    assert batches == [[0, 1, 2]]

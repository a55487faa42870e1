"""The local batcher frees a batch's slot before it answers the batch's callers: with one
slot, the next batch's call starts first (a model would otherwise idle while they resume)."""

from __future__ import annotations

import asyncio

from servegraph.dag import BatchSpec
from servegraph.executors.local.batcher import Batcher


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

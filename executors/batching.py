"""`sg.batch` failures isolated: one bad item fails its own call, not its whole batch.

Every executor wraps a batched method with `isolating` *inside* its batch queue (`Batcher`,
which hands the whole batch to one call), so how a batch is formed (`max_batch_size`,
`batch_wait_timeout_s`, `batch_size_fn`, `max_concurrent_batches`) is unchanged. The rule,
per batch call:

- the method raises: the batch is split in halves (the first half one item larger when the
  size is odd) and each half is called again, one after the other, inside the same batch slot;
  a half that raises is split again, down to single items. A single item that raises gets that
  error; every item of a half that succeeds gets its result.
- the method returns an exception instance in an item's place: that item's caller gets it
  raised (the stage's error, as if the item alone had raised); the others get their results.
  This is how a batch function fails one item on purpose, without a split.
- the method returns the wrong number of results: every item of that call gets a
  `ValueError` (a broken contract; calling again would not mend it), without a split.

The bound: a batch of n items is split at most ceil(log2 n) levels deep, so an item is in at
most 1 + ceil(log2 n) calls; one failing item costs at most 2 ceil(log2 n) calls beyond the
first, every item failing 2n - 2. Each item's `Outcome` carries its depth (`splits`), which a
trace shows: the caller notes it through `noted()` (a context variable, so a trace and the
call it times need not share anything else).

Since a split calls the method again on items it has seen, a batched method must be safe to
call twice on the same item, as a stage with `max_retries` must.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..compiler.plan import Plan
    from ..dag import BatchSpec

BatchFn = Callable[..., Awaitable[Any]]


def planned(spec: BatchSpec, plan: Plan, stage: str, method: str | None) -> BatchSpec:
    """`spec` (a method's `sg.batch`) with the batch size, slots and wait its plan says where
    the capacity pass planned them (`BatchPlan`, the declared ones kept beside them); a
    stand-in batching by settings of its own (a test's override) keeps them."""
    found = plan.stage(stage).batching.get(method or "__call__")
    if found is None or (found.declared_max_batch_size, found.declared_max_concurrent_batches,
                         found.declared_batch_wait_timeout_s) != (
            spec.max_batch_size, spec.max_concurrent_batches, spec.batch_wait_timeout_s):
        return spec
    return dataclasses.replace(spec, max_batch_size=found.max_batch_size,
                               max_concurrent_batches=found.max_concurrent_batches,
                               batch_wait_timeout_s=found.batch_wait_timeout_s)


@dataclass(frozen=True)
class Outcome:
    """One item's end in a batch: its value or its error, and how many times the batch that
    settled it had been split (0: the first call did). Also what a traced call on Serve
    answers the driver with (`StageReplica.reported`)."""

    value: Any = None
    error: BaseException | None = None
    splits: int = 0


def isolating(fn: BatchFn) -> Callable[..., Awaitable[list[Outcome]]]:
    """`fn` (typed on the batch: lists in, a list out) answering one `Outcome` per item, in
    order, by the rule of this module; it keeps `fn`'s name and signature."""

    @functools.wraps(fn)
    async def run_batch(*columns: list[Any], **keyed: list[Any]) -> list[Outcome]:
        return await _settle(fn, list(columns), keyed, depth=0)

    return run_batch


async def _settle(fn: BatchFn, columns: list[list[Any]], keyed: dict[str, list[Any]],
                  depth: int) -> list[Outcome]:
    size = len(columns[0]) if columns else len(next(iter(keyed.values()), []))
    try:
        results = await fn(*columns, **keyed)
    except Exception as exc:
        if size <= 1:
            return [Outcome(error=exc, splits=depth)] * size
        half = (size + 1) // 2
        first = await _settle(fn, [c[:half] for c in columns],
                              {k: v[:half] for k, v in keyed.items()}, depth + 1)
        second = await _settle(fn, [c[half:] for c in columns],
                               {k: v[half:] for k, v in keyed.items()}, depth + 1)
        return first + second
    if len(results) != size:
        wrong = ValueError(f"the batched method returned {len(results)} results for "
                           f"{size} inputs")
        return [Outcome(error=wrong, splits=depth)] * size
    return [Outcome(error=result, splits=depth) if isinstance(result, Exception)
            else Outcome(value=result, splits=depth) for result in results]


@dataclass
class BatchNote:
    """What the batched calls made under `noted()` reported: the splits their batches made
    before settling them (summed when several calls, or several attempts, are noted)."""

    splits: int = 0


_NOTE: contextvars.ContextVar[BatchNote | None] = contextvars.ContextVar(
    "servegraph_batch_note", default=None)


@contextmanager
def noted() -> Iterator[BatchNote]:
    """Note the splits of the batched calls made in this context (and the tasks it starts)."""
    note = BatchNote()
    token = _NOTE.set(note)
    try:
        yield note
    finally:
        _NOTE.reset(token)


def noting() -> bool:
    """Whether a caller is noting splits here (a traced call: on Serve, the driver then asks
    the replica for its `Outcome`)."""
    return _NOTE.get() is not None


def settle(outcome: Outcome) -> Any:
    """One caller's end of a batched call: its value, or its error raised; its splits noted."""
    note = _NOTE.get()
    if note is not None:
        note.splits += outcome.splits
    if outcome.error is not None:
        raise outcome.error
    return outcome.value

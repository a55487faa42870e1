"""A request's deadline: the wall-clock time its whole budget runs out (the graph's
`timeout_s`, or a shorter one its caller asks for), in a context variable.

The core sets it for one request; every call the request starts sees it (asyncio copies the
context into each task), and on Serve the driver sends it with each call (`deadline=`), the
replica setting it again around the stage's code. A stage's own `timeout_s` is cut to what is
left (`budget`), so it never outlives the request. Wall-clock time, not a monotonic clock, so
that replicas in other processes (on the same cluster's synchronised clocks) read it alike.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

DEADLINE: ContextVar[float | None] = ContextVar("servegraph_deadline", default=None)


def request_budget(asked: float | None, graph: float | None) -> float | None:
    """A request's budget in seconds: what its caller asked for, capped by its graph's."""
    if asked is None:
        return graph
    return asked if graph is None else min(asked, graph)


def remaining() -> float | None:
    """Seconds left before this request's deadline (None: it has none)."""
    deadline = DEADLINE.get()
    return None if deadline is None else deadline - time.time()


def past_deadline() -> bool:
    """Whether this request had a deadline, and it has passed."""
    left = remaining()
    return left is not None and left <= 0


def budget(timeout_s: float | None) -> tuple[float | None, bool]:
    """A call's bound: its stage's `timeout_s` cut to what is left of the request's budget;
    and whether the request's deadline is the bound."""
    left = remaining()
    if left is None or (timeout_s is not None and timeout_s <= left):
        return timeout_s, False
    return max(left, 0.0), True


@contextlib.contextmanager
def until(deadline: float | None) -> Iterator[None]:
    """Run the enclosed code under this deadline (a replica, for one call)."""
    if deadline is None:
        yield
        return
    token = DEADLINE.set(deadline)
    try:
        yield
    finally:
        DEADLINE.reset(token)

"""Chunked map calls, checked without Ray: the driver's `ServeRunner` sends a map's elements
in chunks to a real `StageReplica` built in-process (the handle is a stand-in that calls it),
and the answers equal per-element calls' for any width and chunk size."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import servegraph as sg
from servegraph.compiler.plan import MapPlan
from servegraph.executors.core import execute
from servegraph.executors.program import Program
from servegraph.executors.ray.driver import ServeRunner, chunk_size
from servegraph.executors.ray.replica import StageReplica, serve_methods
from tests import fanout_stages as fs


class ReplicaHandle:
    """A `DeploymentHandle` calling a replica object in this process; it counts the calls."""

    def __init__(self, replica: StageReplica, calls: list[str], method: str = "__call__"
                 ) -> None:
        self.replica, self.calls, self.method = replica, calls, method
        self.sent: list[tuple[Any, ...]] = []

    def options(self, *, method_name: str, **_: Any) -> ReplicaHandle:
        return ReplicaHandle(self.replica, self.calls, method_name)

    def remote(self, *args: Any) -> asyncio.Future[Any]:
        self.calls.append(self.method)
        self.sent.append(args)

        async def call() -> Any:  # Serve resolves the responses passed as arguments
            resolved = [await arg if isinstance(arg, asyncio.Future) else arg for arg in args]
            return await getattr(self.replica, self.method)(*resolved)
        return asyncio.ensure_future(call())


def served(graph: sg.Graph, xs: list[int], replicas: int = 1) -> tuple[Any, list[str]]:
    plan = sg.compile(graph)
    calls: list[str] = []
    handle = ReplicaHandle(StageReplica(plan, "square"), calls)
    runner = ServeRunner({"square": handle}, plan.driver.name, serve_methods(plan),
                         {"square": replicas})
    return asyncio.run(execute(Program(plan), {"xs": xs}, runner)), calls


def test_chunk_sizes_spread_the_elements_over_the_replicas() -> None:
    assert [chunk_size(None, width, 1) for width in (0, 1, 4, 5, 16, 2000, 20000)] == [
        1, 1, 1, 2, 4, 500, 1000]
    assert chunk_size(None, 2000, 5) == 100
    assert chunk_size(MapPlan(chunk_size=7, max_width=10), 2000, 5) == 7


def test_a_map_goes_out_in_chunks() -> None:
    xs = list(range(40))
    assert served(fs.squares(), xs) == ([x * x for x in xs], ["chunk"] * 4)
    assert served(fs.squares(), [3, 4]) == ([9, 16], ["chunk", "chunk"])


def test_a_failure_in_a_chunk_names_the_elements_index() -> None:
    try:
        served(fs.squares(chunk_size=100), list(range(1200, 1300)))
    except sg.StageError as exc:
        assert "element 34 of the map: 1234 is refused" in str(exc)
        assert exc.stage == "square"
    else:
        raise AssertionError("no error")


@settings(max_examples=40, deadline=None)
@given(xs=st.lists(st.integers(-1000, 1000), max_size=300),
       size=st.one_of(st.none(), st.integers(1, 60)), replicas=st.integers(1, 4))
def test_chunked_and_per_element_maps_agree(xs: list[int], size: int | None,
                                            replicas: int) -> None:
    graph = fs.squares(chunk_size=size)
    chunked, _ = served(graph, xs, replicas)
    assert chunked == sg.run_local(graph, {"xs": xs}) == [x * x for x in xs]


def test_a_chunked_maps_value_passes_on_unawaited() -> None:
    plan = sg.compile(fs.summed())
    squares = ReplicaHandle(StageReplica(plan, "square"), [])
    totals = ReplicaHandle(StageReplica(plan, "total"), [])
    runner = ServeRunner({"square": squares, "total": totals}, plan.driver.name,
                         serve_methods(plan), {"square": 1, "total": 1})
    xs = list(range(12))
    assert asyncio.run(execute(Program(plan), {"xs": xs}, runner)) == sum(x * x for x in xs)
    [(_, shape, *flat)] = totals.sent  # the chunks' responses, spread, not their values
    assert shape == (("chunks", 0, 4),)
    assert len(flat) == 4 and all(isinstance(part, asyncio.Future) for part in flat)

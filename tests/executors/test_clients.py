"""The two clients mirror each other as httpx's `Client` and `AsyncClient` do: `LocalExecutor`
and the Serve `PipelineHandle` have the same methods, blocking and awaited, with the same
arguments, so tests and users never branch. One body here runs every method on the local
executor; the same methods on Serve run through the `pipeline` fixture
(tests/testing/test_testing_toolkit.py) and tests/executors/test_streaming.py."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import servegraph as sg
from servegraph.executors.local import LocalExecutor
from tests.stages import diamond
from tests.stream_stages import shouted

PAIRS = {"call": "acall", "stream": "astream", "trace": "atrace"}
ALIASES = {"run", "remote"}  # each client's first name for `acall`, kept
LIFECYCLE = {"shutdown"}  # a deployment's, deleted by its handle; an executor owns none


def public_methods(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items()
            if callable(value) and not name.startswith("_")}


def test_both_clients_have_the_same_methods_in_blocking_and_awaited_pairs() -> None:
    from servegraph.serving.handle import PipelineHandle

    assert LocalExecutor.run is LocalExecutor.acall
    assert PipelineHandle.remote is PipelineHandle.acall
    local = public_methods(LocalExecutor) - ALIASES
    served = public_methods(PipelineHandle) - ALIASES - LIFECYCLE
    assert local == served == {*PAIRS, *PAIRS.values()}
    for name in sorted(local):  # same parameters, defaults and return types on both
        assert inspect.signature(getattr(LocalExecutor, name)) == \
            inspect.signature(getattr(PipelineHandle, name)), name
    for blocking, awaited in PAIRS.items():
        assert list(inspect.signature(getattr(LocalExecutor, blocking)).parameters) == \
            list(inspect.signature(getattr(LocalExecutor, awaited)).parameters)
    for cls in (LocalExecutor, PipelineHandle):
        assert inspect.iscoroutinefunction(cls.acall)
        assert inspect.iscoroutinefunction(cls.atrace)
        assert not inspect.iscoroutinefunction(cls.call)


def test_one_body_runs_every_method_on_the_local_executor() -> None:
    executor = sg.LocalExecutor(diamond())
    streaming = sg.LocalExecutor(shouted())
    payload, text = {"x": 1}, {"text": "a b"}
    assert executor.call(payload) == 10
    traced = executor.trace(payload, "r-1")
    assert (traced.output, traced.error, traced.executor) == (10, None, "local")
    assert traced.span("add").inputs == (4, 6)
    assert list(streaming.stream(text)) == ["A ", "B "]

    async def awaited() -> None:
        assert await executor.acall(payload) == 10
        assert (await executor.atrace(payload)).span("add").output == 10
        assert [chunk async for chunk in streaming.astream(text)] == ["A ", "B "]
        for blocking, arguments in ((executor.call, payload), (executor.trace, payload),
                                    (streaming.stream, text)):
            with pytest.raises(sg.PipelineError, match="an event loop is running here: use "
                               r"`(await|async for chunk in) sg\.LocalExecutor"):
                blocking(arguments)

    asyncio.run(awaited())


@sg.deployment
async def slow(x: int) -> int:
    await asyncio.sleep(x)
    return x


@sg.deployment
def fails(x: int) -> int:
    raise ValueError(f"no {x}")


def test_request_id_and_timeout_s_on_the_local_executor() -> None:
    with sg.InputNode() as inp:
        graph = sg.Graph(slow.bind(inp.x), name="slowly")
    executor = sg.LocalExecutor(graph)
    assert executor.call({"x": 0}, timeout_s=5) == 0
    with pytest.raises(sg.StageTimeoutError) as caught:
        executor.call({"x": 30}, "r-2", timeout_s=0.05)
    assert str(caught.value) == "stage 'slowly' timed out: no result within timeout_s=0.05"
    assert (caught.value.stage, caught.value.request_id) == ("slowly", "r-2")
    traced = executor.trace({"x": 30}, timeout_s=0.05)
    assert isinstance(traced.error, sg.StageTimeoutError)
    assert traced.span("slow").error == "cancelled"

    with sg.InputNode() as inp:
        failing = sg.LocalExecutor(sg.Graph(fails.bind(inp.x)))
    with pytest.raises(sg.StageError) as failed:
        failing.call({"x": 1}, "r-3")
    assert (failed.value.stage, failed.value.request_id) == ("fails", "r-3")
    assert failing.trace({"x": 1}, request_id="r-4").error.request_id == "r-4"


closed: list[int] = []


@sg.deployment
async def endless(start: int) -> AsyncIterator[int]:
    number = start
    try:
        while True:
            yield number
            number += 1
            await asyncio.sleep(0)
    finally:
        closed.append(number)


def test_a_blocking_stream_left_early_closes_the_stage_generator() -> None:
    with sg.InputNode() as inp:
        executor = sg.LocalExecutor(sg.Graph(endless.bind(inp.start), name="endless"))
    closed.clear()
    chunks = executor.stream({"start": 5})
    assert [next(chunks), next(chunks)] == [5, 6]
    chunks.close()  # what leaving a `for` loop early does, once the iterator is dropped
    assert closed == [6]
    for chunk in executor.stream({"start": 1}):
        if chunk == 3:
            break
    assert closed == [6, 3]



@pytest.mark.ray
def test_request_id_and_timeout_s_on_a_served_handle(deploy: Callable[..., Any]) -> None:
    """The same meaning as on the local executor (requests that outlive their caller's
    timeout sleep 3 s, so the application is deleted quickly after)."""
    with sg.InputNode() as inp:
        graph = sg.Graph(slow.bind(inp.x), name="slowly")
    handle = deploy(graph, name="slowly", route_prefix="/slowly")
    assert handle.call({"x": 0}, timeout_s=60) == 0
    with pytest.raises(sg.StageTimeoutError) as caught:
        handle.call({"x": 3}, "r-5", timeout_s=0.5)
    assert str(caught.value) == "stage 'slowly' timed out: no result within timeout_s=0.5"
    assert caught.value.request_id == "r-5"
    assert isinstance(handle.trace({"x": 3}, timeout_s=0.5).error, sg.StageTimeoutError)

    async def awaited() -> None:
        with pytest.raises(sg.StageTimeoutError):
            await handle.acall({"x": 3}, timeout_s=0.5)
        with pytest.raises(sg.StageError) as failed:
            await handle.acall({"x": "no"}, "r-6")
        assert (failed.value.stage, failed.value.request_id) == ("slow", "r-6")

    asyncio.run(awaited())

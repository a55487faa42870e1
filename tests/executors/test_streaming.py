"""Streaming: an async generator stage streams its chunks to the caller (HTTP chunks, a
handle's `stream()`), or into a downstream stage that reads it chunk by chunk, on both
executors — which Ray Serve itself cannot do (ray-project/ray#57098)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import servegraph as sg
from tests.sites import at
from tests.stream_stages import (
    Shout,
    Words,
    count,
    counted,
    gate_graph,
    liar,
    numbers,
    numbers_graph,
    shouted,
)


def here(code: str) -> str:
    return at(__file__, code)


async def _chunks(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


def test_a_stream_feeds_a_stage_that_reads_it_chunk_by_chunk_locally() -> None:
    assert sg.run_local(shouted(), {"text": "hello big world"}) == ["HELLO ", "BIG ", "WORLD "]
    assert sg.run_local(counted(), {"text": "hello big world"}) == 3
    assert list(sg.LocalExecutor(shouted()).stream({"text": "a b"})) == ["A ", "B "]
    stream = sg.LocalExecutor(shouted()).astream({"text": "a b"})
    assert asyncio.run(_chunks(stream)) == ["A ", "B "]


def test_chunks_arrive_before_the_last_is_made_locally(tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    async def read() -> list[str]:
        stream = sg.LocalExecutor(gate_graph()).astream({"gate": str(gate)})
        first = await anext(stream)
        assert not gate.exists()  # 'first' came while the generator waits at the gate
        gate.touch()
        return [first, *[chunk async for chunk in stream]]

    assert asyncio.run(read()) == ["first", "last"]
    gate.unlink()
    blocking = sg.LocalExecutor(gate_graph()).stream({"gate": str(gate)})
    assert next(blocking) == "first" and not gate.exists()  # the same, blocking
    gate.touch()
    assert list(blocking) == ["last"]


def test_a_failure_mid_stream_names_the_streaming_stage() -> None:
    async def read() -> list[int]:
        return await _chunks(sg.LocalExecutor(numbers_graph()).astream({"n": 3}))

    with pytest.raises(sg.StageError) as caught:
        asyncio.run(read())
    assert caught.value.stage == "numbers"
    assert caught.value.message == "3 is too many"
    assert caught.value.error_type == "ValueError"
    seen: list[int] = []
    with pytest.raises(sg.StageError, match="3 is too many"):
        seen.extend(sg.LocalExecutor(numbers_graph()).stream({"n": 3}))
    assert seen == [0, 1, 2]


def test_strict_mode_checks_every_chunk() -> None:
    with sg.InputNode() as inp:
        out = liar.bind(inp.n)
    graph = sg.Graph(out, name="liar")
    assert sg.run_local(graph, {"n": 1}) == [1, "three"]
    with pytest.raises(sg.EdgeTypeError) as caught:
        sg.run_local(graph, {"n": 1}, strict=True)
    assert caught.value.stage == "liar"
    assert caught.value.message == ("strict mode: a chunk of liar expects int, got str 'three' "
                                    "(Input should be a valid integer)")


def test_a_plan_that_does_not_stream_says_so() -> None:
    with pytest.raises(sg.PipelineError, match="does not stream"):
        sg.LocalExecutor(counted()).stream({"text": "x"})
    with pytest.raises(sg.PipelineError, match="does not stream"):
        sg.LocalExecutor(counted()).astream({"text": "x"})


def test_a_stream_is_read_once() -> None:
    with sg.InputNode() as inp:
        words = Words.bind().words.bind(inp.text)
        first = count.bind(words)
        second = count.bind(words)
        both = count.options(name="again").bind(Shout.bind().shout.bind(words))
    with pytest.raises(sg.CompileError) as caught:
        sg.compile(sg.Graph([first, second, both]))
    error = caught.value
    assert (error.pass_name, error.stage) == ("validate", "Words.words")
    assert error.message == ("the stream of Words.words is read 3 times: a stream can be "
                             "read once, chunk by chunk")
    assert error.site == here("second = count.bind(words)")


def test_a_stream_is_the_whole_output_or_read_in_a_stage() -> None:
    with sg.InputNode() as inp:
        words = Words.bind().words.bind(inp.text)
    with pytest.raises(sg.CompileError, match="one of several outputs"):
        sg.compile(sg.Graph({"words": words}))


def test_map_over_a_stream_and_a_map_of_a_streaming_stage_are_refused() -> None:
    with sg.InputNode() as inp:
        mapped = sg.map(numbers, inp.sizes)
    with pytest.raises(sg.CompileError) as caught:
        sg.compile(sg.Graph(mapped))
    assert caught.value.message.startswith("sg.map over the streaming stage numbers")
    with sg.InputNode() as inp:
        over = sg.map(count, Words.bind().words.bind(inp.text))
    with pytest.raises(sg.CompileError) as caught:
        sg.compile(sg.Graph(over))
    assert caught.value.message == ("sg.map over the stream of Words.words: map needs the "
                                    "whole list")


def test_a_stream_into_a_parameter_that_wants_a_value_is_a_type_error() -> None:
    @sg.deployment
    def shout_once(text: str) -> str:
        return text.upper()

    with sg.InputNode() as inp:
        out = shout_once.bind(Words.bind().words.bind(inp.text))
    with pytest.raises(sg.TypeMismatchError) as caught:
        sg.compile(sg.Graph(out))
    assert caught.value.message == (
        "parameter 'text' of shout_once expects str, but the value of Words.words "
        f"({here('out = shout_once.bind(Words.bind().words.bind(inp.text))')}) is "
        "AsyncIterator[str]")


@pytest.mark.ray
def test_streams_on_serve_over_the_handle_and_http(deploy: Callable[..., Any]) -> None:
    handle = deploy(shouted(), name="shouted", route_prefix="/shouted")
    payload = {"text": "hello big world"}
    assert handle.call(payload) == ["HELLO ", "BIG ", "WORLD "] == sg.run_local(shouted(),
                                                                              payload)
    assert list(handle.stream(payload)) == ["HELLO ", "BIG ", "WORLD "]
    with httpx.stream("POST", handle.url, json=payload, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert "".join(response.iter_text()) == "HELLO BIG WORLD "
    counter = deploy(counted(), name="counted", route_prefix="/counted")
    assert counter.call(payload) == 3
    assert httpx.post(counter.url, json=payload, timeout=60).json() == 3


@pytest.mark.ray
def test_a_handle_on_an_event_loop_of_its_own_streams_too(deploy: Callable[..., Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Where Serve was imported in its throughput-optimised mode, a `PipelineHandle` runs every
    call on a loop of its own (a response generator there must be started, not awaited)."""
    from ray import serve

    from servegraph.serving.handle import PipelineHandle

    served = deploy(shouted(), name="ownloop", route_prefix="/ownloop")
    monkeypatch.setattr("servegraph.serving.handle.router_in_separate_loop", lambda: False)
    handle = PipelineHandle(serve.get_app_handle("ownloop"), "ownloop", "/ownloop", served.url)
    payload, expected = {"text": "a b"}, ["A ", "B "]
    assert list(handle.stream(payload)) == handle.call(payload) == expected

    async def awaited() -> tuple[list[str], list[str]]:
        return [chunk async for chunk in handle.astream(payload)], await handle.acall(payload)

    assert asyncio.run(awaited()) == (expected, expected)
    assert handle.trace(payload).output == expected


@pytest.mark.ray
def test_a_graph_of_an_app_streams_over_its_handle(deploy: Callable[..., Any]) -> None:
    """An `sg.App` of two graphs: its handle's graph streams (blocking and awaited), named
    to the app's ingress, which holds more than one graph."""
    handle = deploy(sg.App({"/shout": shouted(), "/count": counted()}), name="streams",
                    route_prefix="/streams")
    payload = {"text": "a b"}
    assert list(handle["shouted"].stream(payload)) == ["A ", "B "]

    async def streamed() -> list[str]:
        return [chunk async for chunk in handle["shouted"].astream(payload)]

    assert asyncio.run(streamed()) == ["A ", "B "]
    assert handle["counted"].call(payload) == 2


@pytest.mark.ray
def test_chunks_arrive_over_http_before_the_last_is_made(deploy: Callable[..., Any],
                                                         tmp_path: Path) -> None:
    handle = deploy(gate_graph(), name="gate", route_prefix="/gate")
    gate = tmp_path / "gate"
    seen: list[str] = []
    with httpx.stream("POST", handle.url, json={"gate": str(gate)}, timeout=90) as response:
        assert response.status_code == 200
        for chunk in response.iter_text():
            seen.append(chunk)
            if chunk == "first":
                assert not gate.exists()
                threading.Timer(0.2, gate.touch).start()
    assert "".join(seen) == "firstlast"
    assert seen[0] == "first"


@pytest.mark.ray
def test_a_failing_stream_on_serve_names_its_stage(deploy: Callable[..., Any]) -> None:
    handle = deploy(numbers_graph(), name="numbers", route_prefix="/numbers")
    assert handle.call({"n": 2}) == [0, 1]
    with pytest.raises(sg.StageError) as caught:
        list(handle.stream({"n": 3}))
    assert (caught.value.stage, caught.value.message) == ("numbers", "3 is too many")
    with httpx.stream("POST", handle.url, json={"n": 3}, timeout=60) as response:
        assert response.status_code == 200  # the first chunk went out before the failure
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [line for line in response.iter_lines() if line]
    assert lines[:3] == ["0", "1", "2"]
    assert json.loads(lines[3])["stage"] == "numbers"
    assert httpx.post(handle.url, json={"n": 1}, timeout=60).text == "0\n"

"""Per-stage `timeout_s` and `max_retries`: validated like every option, shown by the plan, and
honoured alike by every executor (a hang gives StageTimeoutError and an HTTP 504 naming the
stage; a flaky idempotent stage succeeds within its retries)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

import servegraph as sg
from servegraph import testing as sgt
from tests.sites import at
from tests.stages import diamond
from tests.toolkit_stages import (
    RELEASE,
    TIMEOUT_S,
    dripping,
    flaky,
    stalling,
    stalls,
)


def here(code: str) -> str:
    return at(__file__, code)


def at_stages(code: str) -> str:
    from tests import toolkit_stages

    return at(toolkit_stages.__file__, code)


STALLING = at_stages("out = combine.bind(stalls.bind(inp.x), blocks.bind(inp.y))")


@pytest.fixture
def released() -> Iterator[None]:
    """Sync calls of `blocks` stuck in this process are let go when the test ends."""
    RELEASE.clear()
    try:
        yield
    finally:
        RELEASE.set()


def _compile_error(**options: object) -> str:
    @sg.deployment(**options)
    def stage(x: int) -> int:
        return x

    with sg.InputNode() as inp:
        out = stage.bind(inp.x)
    with pytest.raises(sg.OptionsError) as caught:
        sg.compile(sg.Graph(out))
    return str(caught.value)


@pytest.mark.parametrize(("options", "problem", "hint"), [
    ({"timeout_s": 0}, "option timeout_s=0: must be a positive number of seconds",
     "give the seconds one call may take, e.g. timeout_s=2.5, or leave it out for no limit"),
    ({"timeout_s": "1s"}, "option timeout_s='1s': must be a positive number of seconds",
     "give the seconds one call may take, e.g. timeout_s=2.5, or leave it out for no limit"),
    ({"timeout_s": float("inf")}, "option timeout_s=inf: must be a positive number of seconds",
     "give the seconds one call may take, e.g. timeout_s=2.5, or leave it out for no limit"),
    ({"max_retries": -1}, "option max_retries=-1: must be a whole number >= 0",
     "give how many times a failed call is tried again, e.g. max_retries=2 (only for "
     "idempotent stages)"),
    ({"max_retries": 1.5}, "option max_retries=1.5: must be a whole number >= 0",
     "give how many times a failed call is tried again, e.g. max_retries=2 (only for "
     "idempotent stages)"),
    ({"max_retries": True}, "option max_retries=True: must be a whole number >= 0",
     "give how many times a failed call is tried again, e.g. max_retries=2 (only for "
     "idempotent stages)"),
])
def test_bad_timeouts_and_retries_are_option_errors(options: dict[str, object], problem: str,
                                                    hint: str) -> None:
    site = here("@sg.deployment(**options)")
    assert _compile_error(**options) == f"[validate] stage 'stage' ({site}): {problem}\n" \
        f"  hint: {hint}"


def test_a_stream_is_never_retried() -> None:
    @sg.deployment(max_retries=1)
    async def words(text: str) -> AsyncIterator[str]:
        for word in text.split():
            yield word

    @sg.deployment(max_retries=1)
    async def count(chunks: AsyncIterator[str]) -> int:
        return len([chunk async for chunk in chunks])

    with sg.InputNode() as inp:
        streamed = words.bind(inp.text)
    with pytest.raises(sg.CompileError) as produced:
        sg.compile(sg.Graph(streamed))
    assert str(produced.value) == (
        f"[validate] stage 'words' ({here('streamed = words.bind(inp.text)')}): max_retries on "
        "the streaming stage words: chunks it already sent downstream cannot be taken back, so "
        "a stream is never retried\n  hint: drop max_retries (timeout_s still bounds the wait "
        "for each chunk), or retry inside the generator before it yields")
    with sg.InputNode() as inp:
        counted = count.bind(words.options(max_retries=0).bind(inp.text))
    with pytest.raises(sg.CompileError) as read:
        sg.compile(sg.Graph(counted))
    site = here("counted = count.bind(words.options(max_retries=0).bind(inp.text))")
    assert str(read.value) == (
        f"[validate] stage 'count' ({site}): max_retries on count, which reads the stream of "
        "words: a stream is read once, so the call cannot be made again\n  hint: drop "
        "max_retries from count, or collect the stream into a list in a stage before it")


def test_the_plan_carries_and_shows_them() -> None:
    plan = sg.compile(flaky())
    stage = plan.stage("Flaky")
    assert (stage.timeout_s, stage.max_retries) == (None, 2)
    assert "timeout_s" not in stage.options and "max_retries" not in stage.options
    assert "  Flaky                fused into flaky_driver: light CPU stage" in plan.explain()
    unfused = sg.compile(flaky(), fuse=False)
    assert "  Flaky                class    1 replica, 1 CPU, 2 retries" in unfused.explain()
    slow = sg.compile(stalling(), fuse=False)
    assert slow.stage("stalls").timeout_s == TIMEOUT_S
    assert "stalls               function 1 replica, 1 CPU, timeout 1 s per call" in \
        slow.explain()
    assert 'stalls · 1 replica · 1 CPU · timeout 1s' in sg.render(slow, format="mmd").decode()
    loaded = sg.CompiledPipeline.model_validate_json(slow.model_dump_json())
    assert loaded.stage("stalls") == slow.stage("stalls")


def test_a_flaky_stage_succeeds_within_its_retries(pipeline: sgt.PipelineTester) -> None:
    graph = flaky()  # max_retries=2: three attempts
    assert pipeline.run(graph, {"key": "a", "fail": 2}) == {"key": "a", "attempt": 3}
    assert pipeline.run(graph, {"key": "b", "fail": 0}) == {"key": "b", "attempt": 1}
    with pytest.raises(sg.StageError) as caught:
        pipeline.run(graph, {"key": "c", "fail": 3})
    error = caught.value
    assert (error.stage, error.error_type, error.attempts) == ("Flaky", "ConnectionError", 3)
    assert str(error).endswith("raised ConnectionError: c: attempt 3 failed (after 3 attempts)")


@pytest.mark.servegraph_executors("local", "local-strict")
def test_retries_are_set_per_stage(pipeline: sgt.PipelineTester) -> None:
    with pytest.raises(sg.StageError) as caught:
        pipeline.run(flaky(retries=1), {"key": "a", "fail": 2})
    assert caught.value.attempts == 2
    with pytest.raises(sg.StageError) as once:
        pipeline.run(flaky(retries=0), {"key": "a", "fail": 1})
    assert once.value.attempts == 1 and not str(once.value).endswith("attempts)")


def test_a_hanging_stage_times_out_with_a_504_naming_it(
        pipeline: sgt.PipelineTester, released: None) -> None:
    graph = stalling()
    assert pipeline.run(graph, {"x": 1, "y": 2}) == [2, 20]
    with pytest.raises(sg.StageTimeoutError) as caught:
        pipeline.run(graph, {"x": -1, "y": 2})
    assert (caught.value.stage, caught.value.site) == ("stalls", STALLING)
    assert str(caught.value) == f"stage 'stalls' ({STALLING}) timed out: no result within " \
        "timeout_s=1"
    response = pipeline.http(graph, {"x": -1, "y": 2}, headers={"x-request-id": "slow-1"})
    assert response.status_code == 504
    assert response.json() == {"error": str(caught.value), "stage": "stalls",
                               "request_id": "slow-1"}
    with pytest.raises(sg.StageTimeoutError) as blocked:  # sync: it cannot be interrupted
        pipeline.run(graph, {"x": 1, "y": -2})
    assert blocked.value.stage == "blocks"
    assert pipeline.run(graph, {"x": 3, "y": 4}) == [4, 40]


def test_an_injected_hang_times_out(pipeline: sgt.PipelineTester) -> None:
    with pytest.raises(sg.StageTimeoutError) as caught:
        pipeline.run(stalling(), {"x": 1, "y": 1}, faults={stalls: sgt.hangs(30)})
    assert (caught.value.stage, caught.value.site) == ("stalls", STALLING)


def test_a_stream_times_out_waiting_for_its_next_chunk(pipeline: sgt.PipelineTester) -> None:
    graph = dripping()
    assert pipeline.run(graph, {"n": 3}) == [0, 1, 2]
    traced = pipeline.trace(graph, {"n": 3})  # a streamed output, traced: its chunks as output
    assert (traced.output, traced.span("drip").output) == ([0, 1, 2], "<stream>")
    assert traced.span("drip").inputs == 3
    with pytest.raises(sg.StageTimeoutError) as caught:
        pipeline.run(graph, {"n": 1})
    assert caught.value.stage == "drip"
    assert caught.value.message == "no chunk within timeout_s=1"


def test_a_timeout_the_stage_raises_itself_is_its_own_error() -> None:
    @sg.deployment(timeout_s=30, max_retries=1)
    async def gives_up(x: int) -> int:
        raise TimeoutError("the upstream API gave up")

    with sg.InputNode() as inp:
        out = gives_up.bind(inp.x)
    with pytest.raises(sg.StageError) as caught:
        sg.run_local(sg.Graph(out), {"x": 1})
    assert type(caught.value) is sg.StageError
    assert (caught.value.error_type, caught.value.attempts) == ("TimeoutError", 2)


def test_only_the_stages_own_failures_are_retried() -> None:
    calls: list[int] = []

    @sg.deployment(max_retries=3)
    def liar(x: int) -> int:
        calls.append(x)
        return "not an int"  # type: ignore[return-value]

    with sg.InputNode() as inp:
        out = liar.bind(inp.x)
    with pytest.raises(sg.EdgeTypeError):
        sg.run_local(sg.Graph(out), {"x": 1}, strict=True)
    assert calls == [1]


def test_a_batched_stage_under_a_timeout_still_batches() -> None:
    seen: list[list[int]] = []

    @sg.deployment(timeout_s=30, max_retries=1)
    class Squares:
        @sg.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
        async def square(self, xs: list[int]) -> list[int]:
            seen.append(list(xs))
            return [x * x for x in xs]

    with sg.InputNode() as inp:
        out = sg.map(Squares.bind().square, inp.xs)
    assert sg.run_local(sg.Graph(out), {"xs": list(range(6))}) == [x * x for x in range(6)]
    assert seen == [[0, 1, 2, 3], [4, 5]]


def test_stages_without_the_options_keep_their_fast_path() -> None:
    plan = sg.compile(diamond())
    executor = sg.LocalExecutor(plan)
    assert not any(call.guarded for call in executor._runner.calls.values())

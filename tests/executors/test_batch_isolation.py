"""`sg.batch` isolates failures: a batch whose call raises is split in halves and re-run down
to single items, so only the requests whose items fail get the error (issue 20, item 4); an
item fails on purpose by an exception returned in its place. On every executor, over a
handle and over HTTP, then the splitting rule itself on literal inputs."""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import servegraph as sg
from servegraph import testing as sgt
from servegraph.executors.batching import Outcome, isolating
from tests import batch_stages
from tests.batch_stages import REVIEWS, halves, is_bad, reviews
from tests.sites import at

BODY = at(batch_stages.__file__, "body = embedder.embed.bind(inp.body)")
DEEPEST = math.ceil(math.log2(6))  # ReviewEmbedder's max_batch_size is 6


def _expected(review: dict[str, str]) -> list[float]:
    return [float(len(review["title"])), float(len(review["body"]))]


def test_one_bad_review_fails_only_its_own_request(pipeline: sgt.PipelineTester) -> None:
    """Thirty concurrent requests, one in three with an empty body: exactly those fail, with
    the embedder's own error at the body's bind line; the others are answered."""
    graph = reviews()

    async def load() -> list[Any]:
        return await asyncio.gather(*(pipeline.arun(graph, review, trace=False)
                                      for review in REVIEWS), return_exceptions=True)

    results = asyncio.run(load())
    for review, result in zip(REVIEWS, results):
        if is_bad(review):
            assert isinstance(result, sg.StageError), result
            assert (result.stage, result.error_type, result.message, result.site) == (
                "ReviewEmbedder", "ValueError", "cannot embed an empty text", BODY)
        else:
            assert not isinstance(result, BaseException), result
            assert [result["title"][0], result["body"][0]] == _expected(review)
    sizes = [result[part][1] for result in results if isinstance(result, dict)
             for part in ("title", "body")]
    assert max(sizes) > 1  # batches formed


def test_the_trace_counts_the_splits_of_a_calls_batch(pipeline: sgt.PipelineTester) -> None:
    """Traced, the same load shows good items split off from the batches that failed (so
    batches mixed good and bad items), never deeper than ceil(log2(max_batch_size))."""
    graph = reviews()

    async def load() -> list[sgt.Trace]:
        return await asyncio.gather(*(pipeline.atrace(graph, review) for review in REVIEWS))

    traces = asyncio.run(load())
    good_splits, all_splits = [], []
    for review, trace in zip(REVIEWS, traces):
        calls = [span for span in trace.spans if span.op == "call"]
        assert len(calls) == 2
        all_splits += [span.splits for span in calls]
        if is_bad(review):
            assert isinstance(trace.error, sg.StageError)
            assert trace.error.message == "cannot embed an empty text"
            assert [span.error is not None for span in calls] == [False, True]
        else:
            assert trace.error is None
            assert [trace.output["title"][0], trace.output["body"][0]] == _expected(review)
            good_splits += [span.splits for span in calls]
    assert any(good_splits), "no good item shared a batch with a bad one"
    assert max(all_splits) <= DEEPEST
    split = next(trace for trace in traces if any(span.splits for span in trace.spans))
    assert "call split x" in split.table()


def test_over_http_exactly_the_bad_reviews_get_a_500(pipeline: sgt.PipelineTester) -> None:
    graph = reviews()
    assert pipeline.http(graph, REVIEWS[1]).status_code == 200  # deployed before the load
    with ThreadPoolExecutor(len(REVIEWS)) as pool:
        responses = list(pool.map(lambda review: pipeline.http(graph, review), REVIEWS))
    assert [r.status_code for r in responses] == [500 if is_bad(r) else 200 for r in REVIEWS]
    for review, response in zip(REVIEWS, responses):
        body = response.json()
        if is_bad(review):
            assert body["stage"] == "ReviewEmbedder"
            assert body["error"] == f"stage 'ReviewEmbedder' ({BODY}) raised ValueError: " \
                                    "cannot embed an empty text"
        else:
            assert [body["title"][0], body["body"][0]] == _expected(review)


def test_an_exception_returned_in_an_items_place_fails_that_item_only(
        pipeline: sgt.PipelineTester) -> None:
    graph = halves()
    numbers = [4, -1, 6, 8, -3, 10, 2, 0, 5, -7, 12, 9]

    async def load() -> list[Any]:
        return await asyncio.gather(*(pipeline.arun(graph, {"n": n}, trace=False)
                                      for n in numbers), return_exceptions=True)

    results = asyncio.run(load())
    for n, result in zip(numbers, results):
        if n < 0:
            assert isinstance(result, sg.StageError), result
            assert (result.stage, result.error_type, result.message) == (
                "Halver", "ValueError", f"cannot halve {n}: negative")
        else:
            assert result["half"] == n / 2
    assert max(r["batch"] for r in results if isinstance(r, dict)) > 1
    traced = pipeline.trace(graph, {"n": -2})
    assert traced.span("Halver.halve").splits == 0  # a returned exception splits nothing


def test_a_batch_is_split_in_halves_down_to_the_failing_item() -> None:
    seen: list[list[int]] = []

    @sg.deployment
    class NoFives:
        @sg.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
        async def check(self, xs: list[int]) -> list[int]:
            seen.append(list(xs))
            if 5 in xs:
                raise ValueError("no fives")
            return xs

    with sg.InputNode() as inp:
        out = NoFives.bind().check.bind(inp.x)
    executor = sg.LocalExecutor(sg.Graph(out, name="fives"))

    async def load() -> list[sgt.Trace]:
        return await asyncio.gather(*(executor.atrace({"x": x}) for x in range(8)))

    traces = asyncio.run(load())
    assert seen == [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [4], [5],
                    [6, 7]]
    assert [trace.output for trace in traces] == [0, 1, 2, 3, 4, None, 6, 7]
    assert isinstance(traces[5].error, sg.StageError)
    assert traces[5].error.message == "no fives"
    assert [trace.span("NoFives.check").splits for trace in traces] == [1, 1, 1, 1, 3, 3, 2, 2]
    assert "call split x3" in traces[5].table()


def _run(fn: Any, *columns: list[Any], **keyed: list[Any]) -> list[Outcome]:
    return asyncio.run(isolating(fn)(*columns, **keyed))


def test_every_item_failing_costs_2n_minus_1_calls_at_most_ceil_log2_n_deep() -> None:
    sizes: list[int] = []

    async def broken(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        raise RuntimeError(f"down {xs}")

    for n in (1, 2, 5, 8, 13):
        sizes.clear()
        outcomes = _run(broken, list(range(n)))
        assert len(sizes) == 2 * n - 1
        assert [str(o.error) for o in outcomes] == [f"down [{i}]" for i in range(n)]
        assert max(o.splits for o in outcomes) == math.ceil(math.log2(n))


def test_the_rule_keeps_columns_and_keywords_together_and_results_in_order() -> None:
    async def pairs(xs: list[int], ys: list[str], *, zs: list[str]) -> list[Any]:
        if 3 in xs:
            raise KeyError(3)
        return [ValueError("odd") if x % 2 else f"{x}{y}{z}" for x, y, z in zip(xs, ys, zs)]

    outcomes = _run(pairs, [0, 1, 2, 3, 4], list("abcde"), zs=list("vwxyz"))
    assert [o.value for o in outcomes] == ["0av", None, "2cx", None, "4ez"]
    assert [type(o.error).__name__ for o in outcomes] == [
        "NoneType", "ValueError", "NoneType", "KeyError", "NoneType"]
    assert [o.splits for o in outcomes] == [1, 1, 1, 2, 2]


def test_a_wrong_number_of_results_fails_the_batch_without_splitting() -> None:
    calls: list[list[int]] = []

    async def short(xs: list[int]) -> list[int]:
        calls.append(xs)
        return xs[:-1]

    outcomes = _run(short, [1, 2, 3])
    assert calls == [[1, 2, 3]]
    assert {str(o.error) for o in outcomes} == {
        "the batched method returned 2 results for 3 inputs"}


@pytest.mark.parametrize("size, depth", [(1, 0), (2, 1), (6, 3), (8, 3), (32, 5)])
def test_the_bound_the_plan_states(size: int, depth: int) -> None:
    @sg.deployment
    class Sized:
        @sg.batch(max_batch_size=size)
        async def run(self, xs: list[int]) -> list[int]:
            return xs

    with sg.InputNode() as inp:
        out = Sized.bind().run.bind(inp)
    plan = sg.compile(sg.Graph(out))
    assert plan.stage("Sized").batching["run"].max_splits == depth

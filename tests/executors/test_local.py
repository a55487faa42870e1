"""The local executor: results, concurrency, batching, strict mode, overrides, errors."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import numpy as np
import pytest

import servegraph as sg
from tests.stages import (
    EXPECTED,
    PAYLOAD,
    Inc,
    Scorer,
    add,
    diamond,
    double,
    scoring,
    triple,
)

# The diamond and scoring pipelines run on every executor (local, strict, Ray) in
# tests/testing/test_testing_toolkit.py; here, the plain untraced path of run_local.


def test_a_plan_runs_like_its_graph() -> None:
    graph = scoring()
    assert sg.run_local(sg.compile(graph), PAYLOAD) == sg.run_local(graph, PAYLOAD) == EXPECTED
    assert sg.run_local(diamond(), {"x": 2}, strict=True) == 15


def test_decorated_stages_stay_plain_python() -> None:
    assert Inc()(1) == 2
    assert triple(2) == 6
    assert asyncio.run(Scorer(2.0).score(["ab", "c"])) == [4.0, 2.0]


@pytest.mark.parametrize("strict", [False, True])
def test_independent_branches_run_concurrently(strict: bool) -> None:
    """Each branch waits for the other to start: sequential execution would deadlock."""
    started = {"left": asyncio.Event(), "right": asyncio.Event()}

    @sg.deployment
    async def left(x: int) -> int:
        started["left"].set()
        await asyncio.wait_for(started["right"].wait(), timeout=5)
        return x + 1

    @sg.deployment
    async def right(x: int) -> int:
        started["right"].set()
        await asyncio.wait_for(started["left"].wait(), timeout=5)
        return x + 2

    with sg.InputNode() as inp:
        out = add.bind(left.bind(inp.x), right.bind(inp.x))
    graph = sg.Graph(out)

    async def main() -> int:
        for event in started.values():
            event.clear()
        return await sg.LocalExecutor(graph, strict=strict).acall({"x": 1})

    assert asyncio.run(main()) == 5


def test_batching_collects_concurrent_calls() -> None:
    seen: list[list[int]] = []

    @sg.deployment
    class Batched:
        @sg.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
        async def square(self, xs: list[int]) -> list[int]:
            seen.append(list(xs))
            return [x * x for x in xs]

    with sg.InputNode() as inp:
        out = sg.map(Batched.bind().square, inp.xs)
    assert sg.run_local(sg.Graph(out), {"xs": list(range(10))}) == [x * x for x in range(10)]
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_batch_size_fn_counts_the_batch() -> None:
    seen: list[list[str]] = []

    @sg.deployment
    class Tokens:
        @sg.batch(max_batch_size=6, batch_wait_timeout_s=0.05,
                  batch_size_fn=lambda texts: sum(len(t.split()) for t in texts))
        async def count(self, texts: list[str]) -> list[int]:
            seen.append(list(texts))
            return [len(t.split()) for t in texts]

    with sg.InputNode() as inp:
        out = sg.map(Tokens.bind().count, inp.texts)
    texts = ["a b c", "d e", "f", "g h i j", "k"]
    assert sg.run_local(sg.Graph(out), {"texts": texts}) == [3, 2, 1, 4, 1]
    assert seen == [["a b c", "d e", "f"], ["g h i j", "k"]]


def test_stage_error_names_the_stage_and_line() -> None:
    with pytest.raises(sg.StageError) as caught:
        sg.run_local(scoring(), {**PAYLOAD, "factor": -2})
    error = caught.value
    assert error.stage == "Scorer"
    assert error.error_type == "ValueError"
    assert error.message == "factor must be >= 0, got -2"
    assert error.site is not None and error.site.endswith(
        "scaled = scorer.scale.bind(query, factor=inp.factor)")
    with pytest.raises(sg.StageError, match="raised ValueError: element 1 of the map: "
                                            "cannot score 'boom'"):
        sg.run_local(scoring(), {**PAYLOAD, "words": ["ok", "boom"]})


def test_bad_payload_is_an_input_error_naming_the_field() -> None:
    with pytest.raises(sg.InputError) as caught:
        sg.run_local(scoring(), {"query": "q", "words": "not a list"})
    assert caught.value.errors == [
        {"loc": ["words"], "msg": "Input should be a valid list", "type": "list_type"}]
    assert caught.value.message == (
        "request body does not fit tests.stages:Request: invalid words (list_type)")
    with pytest.raises(sg.InputError) as two:  # each problem by pydantic's error type
        sg.run_local(scoring(), {"query": 1})
    assert two.value.message == ("request body does not fit tests.stages:Request: invalid "
                                 "query (string_type), missing words")
    with pytest.raises(sg.InputError) as missing:
        sg.run_local(diamond(), {"y": 1})
    assert missing.value.errors == [{"loc": ["input.x"], "msg": "field required",
                                     "type": "missing"}]


def test_strict_mode_catches_a_wrong_type_the_plain_run_lets_through() -> None:
    @sg.deployment
    def stringly(x: int) -> int:
        return str(x)  # type: ignore[return-value]

    with sg.InputNode() as inp:
        out = stringly.bind(inp.x)
    graph = sg.Graph(out)
    assert sg.run_local(graph, {"x": 4}) == "4"
    with pytest.raises(sg.EdgeTypeError) as caught:
        sg.run_local(graph, {"x": 4}, strict=True)
    assert caught.value.stage == "stringly"
    assert caught.value.message.startswith(
        "strict mode: return value of stringly expects int, got str '4'")


def test_strict_mode_checks_the_request_values_crossing_an_edge() -> None:
    with pytest.raises(sg.EdgeTypeError) as caught:
        sg.run_local(diamond(), {"x": "1"}, strict=True)
    assert caught.value.stage == "Inc"
    assert "parameter 'x' of Inc.__call__ expects int, got str '1'" in caught.value.message


def test_overrides_swap_a_stage_for_a_fake() -> None:
    class FakeScorer:
        def __init__(self, weight: float) -> None:
            self.weight = weight

        async def score(self, word: Any) -> float:  # unbatched fake: called per element
            return 1.0

        def scale(self, value: float, factor: int = 1) -> float:
            return -value

    result = sg.run_local(scoring(), PAYLOAD, overrides={Scorer: FakeScorer})
    assert result["pair"] == [1.0, -1.0]
    assert result["report"]["scores"] == [1.0, 1.0, 1.0]
    by_name = sg.run_local(diamond(), {"x": 1}, overrides={"double": lambda x: 0})
    assert by_name == 6


def test_run_local_inside_a_running_loop_says_what_to_do() -> None:
    async def main() -> None:
        with pytest.raises(sg.PipelineError, match=r"await sg\.LocalExecutor"):
            sg.run_local(diamond(), {"x": 1})
        assert await sg.LocalExecutor(diamond()).acall({"x": 1}) == 10

    asyncio.run(main())


def test_map_over_a_computed_list_and_a_map_of_a_map() -> None:
    @sg.deployment
    def spell(text: str) -> list[str]:
        return list(text)

    @sg.deployment
    async def shout(letter: str) -> str:
        return letter.upper()

    @sg.deployment
    def twice(letter: str) -> str:
        return letter * 2

    with sg.InputNode() as inp:
        letters = spell.bind(inp.word)
        loud = sg.map(shout, letters)
        doubled = sg.map(twice, loud)
    result = sg.run_local(sg.Graph({"loud": loud, "doubled": doubled}), {"word": "abc"})
    assert result == {"loud": ["A", "B", "C"], "doubled": ["AA", "BB", "CC"]}


def test_empty_map_and_constant_arguments() -> None:
    with sg.InputNode() as inp:
        none = sg.map(double, inp.items)
        fixed = add.bind(1, b=inp.y)
    assert sg.run_local(sg.Graph([none, fixed]), {"items": [], "y": 2}) == [[], 3]


def test_a_second_failure_does_not_leak_unretrieved_tasks() -> None:
    @sg.deployment
    async def fail(x: int) -> int:
        raise RuntimeError(f"bad {x}")

    with sg.InputNode() as inp:
        out = add.bind(fail.bind(inp.x), fail.bind(inp.y))
    executor = sg.LocalExecutor(sg.Graph(out))

    async def main() -> list[dict[str, Any]]:
        reported: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: reported.append(ctx))
        with pytest.raises(sg.StageError, match="raised RuntimeError: bad 1"):
            await executor.acall({"x": 1, "y": 2})
        await asyncio.sleep(0)
        gc.collect()
        return reported

    assert asyncio.run(main()) == []


def test_function_stages_share_one_group_and_classes_get_unique_names() -> None:
    with sg.InputNode() as inp:
        a = Inc.bind().__call__.bind(inp.x)
        b = Inc.bind().__call__.bind(a)
        c = double.bind(b)
        d = double.bind(c)
    plan = sg.compile(sg.Graph(d))
    assert [s.name for s in plan.deployments] == ["Inc", "Inc_1", "double"]
    assert sg.run_local(plan, {"x": 0}) == 8


def test_strict_mode_checks_types_pydantic_has_no_schema_for() -> None:
    @sg.deployment
    def zeros(n: int) -> np.ndarray:
        return np.zeros(n)

    @sg.deployment
    def not_an_array(n: int) -> np.ndarray:
        return [0.0] * n  # type: ignore[return-value]

    with sg.InputNode() as inp:
        good = zeros.bind(inp.n)
    assert sg.run_local(sg.Graph(good), {"n": 2}, strict=True).tolist() == [0.0, 0.0]
    with sg.InputNode() as inp:
        bad = not_an_array.bind(inp.n)
    with pytest.raises(sg.EdgeTypeError) as caught:
        sg.run_local(sg.Graph(bad), {"n": 2}, strict=True)
    assert caught.value.message == (
        "strict mode: return value of not_an_array expects ndarray, got list [0.0, 0.0] "
        "(not an instance of ndarray)")

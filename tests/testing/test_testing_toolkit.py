"""servegraph.testing and its pytest plugin: one test body on every executor (`local`,
`local-strict`, `ray`), overrides, fault injection, traces, golden files, and the plugin's
own behaviour (run through pytest's `pytester`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import servegraph as sg
from servegraph import testing as sgt
from tests import stages
from tests.sites import at
from tests.stages import EXPECTED, PAYLOAD, Scorer, add, diamond, double, scoring, summarize
from tests.toolkit_stages import (
    CpuEmbedder,
    GpuEmbedder,
    PairedProbe,
    PerItemProbe,
    search,
    tenfold,
)

DIAMOND_ADD = at(stages.__file__, "out = add.bind(double.bind(a), triple.bind(a))")
SCORER_SCALE = at(stages.__file__, "scaled = scorer.scale.bind(query, factor=inp.factor)")


def test_diamond_and_scoring_give_the_same_results_on_every_executor(
        pipeline: sgt.PipelineTester) -> None:
    """Fan-out, fan-in, a map over the request's list, a batched method shared by several call
    nodes, nested arguments and dict outputs: over a handle (or in-process) and over HTTP."""
    graph = diamond()
    assert [pipeline.run(graph, {"x": x}) for x in range(4)] == [5 * (x + 1) for x in range(4)]
    response = pipeline.http(graph, {"x": 3})
    assert (response.status_code, response.json()) == (200, 20)
    assert response.headers["x-request-id"]

    plan = sg.compile(scoring())
    assert pipeline.run(plan, PAYLOAD) == EXPECTED

    async def concurrent() -> list[Any]:
        payloads = [{**PAYLOAD, "words": ["x" * n, "y"]} for n in range(1, 9)]
        return await asyncio.gather(*(pipeline.arun(plan, p) for p in payloads))

    results = asyncio.run(concurrent())
    assert [r["report"]["scores"] for r in results] == [[0.5 * n, 0.5] for n in range(1, 9)]
    assert pipeline.http(plan, PAYLOAD).json() == EXPECTED


def test_an_override_runs_a_cpu_fake_in_place_of_a_gpu_stage(
        pipeline: sgt.PipelineTester) -> None:
    payload = {"query": "abc", "documents": ["a", "abcd", "xyz"]}
    graph = search()
    overrides = {GpuEmbedder: CpuEmbedder}
    assert pipeline.run(graph, payload, overrides=overrides) == {"best": "xyz", "gpus": 0.0}
    plan = pipeline.plan(graph, overrides=overrides)
    assert plan.stage("GpuEmbedder").options["ray_actor_options"] == {"num_cpus": 0.5}
    assert plan.gpu_layout is None
    assert sg.compile(graph).gpu_layout is not None
    if not pipeline.on_ray:  # the real stage cannot be built here; on Ray it would wait
        with pytest.raises(sg.StageError, match="needs a CUDA GPU"):
            pipeline.run(graph, payload)


def test_a_fake_of_a_batched_method_gets_one_item_unless_it_batches_itself(
        pipeline: sgt.PipelineTester) -> None:
    """`BatchProbe.size` is an `sg.batch` method (a list in, a list out). A fake is called as
    it is written: a plain method, a `"Stage.method"` stand-in or a fault gets one item per
    call; a method of its own under `sg.batch` gets lists, batched by its own settings."""
    graph, payload = stages.batch_probe(), {"first": 1, "items": [2, 3, 4]}
    per_item = {"one": 10, "sizes": [20, 30, 40]}
    assert pipeline.run(graph, payload, overrides={stages.BatchProbe: PerItemProbe}) == per_item
    assert pipeline.run(graph, payload, overrides={"BatchProbe.size": tenfold}) == per_item
    assert pipeline.run(graph, payload, faults={stages.BatchProbe: sgt.returns(5)}) == {
        "one": 5, "sizes": [5, 5, 5]}
    assert pipeline.run(graph, payload, overrides={stages.BatchProbe: PairedProbe}) == {
        "one": 2, "sizes": [2, 2, 2]}


def test_a_call_node_is_replaced_by_a_constant(pipeline: sgt.PipelineTester) -> None:
    with sg.InputNode() as inp:
        a = stages.Inc.bind().__call__.bind(inp.x)
        doubled = double.bind(a)
        out = add.bind(doubled, stages.triple.bind(a))
    graph = sg.Graph(out, name="constant")
    assert pipeline.run(graph, {"x": 1}, overrides={doubled: 100}) == 106
    only_add = pipeline.plan(graph, overrides={a: 5})  # Inc and input.x reach no output now
    assert [s.name for s in only_add.deployments] == ["double", "triple", "add"]
    assert [n.label for n in only_add.nodes] == ["input", "Inc.__call__", "double", "triple",
                                                 "add"]
    assert pipeline.run(graph, {"x": 1}, overrides={a: 5}) == 25


@pytest.mark.servegraph_executors("local", "local-strict")
def test_a_call_node_is_found_by_its_label_or_plan_id(pipeline: sgt.PipelineTester) -> None:
    graph = diamond()
    assert pipeline.run(graph, {"x": 1}, overrides={sgt.node("double"): -6}) == 0
    assert pipeline.run(graph, {"x": 1}, overrides={sgt.node("n4"): 0}) == 4
    assert pipeline.run(graph, {"x": 1}, overrides={"double": lambda x: 0}) == 6
    shown = sg.render(pipeline.plan(graph, overrides={sgt.node("double"): 1}), format="mmd")
    assert '  n3[("double = constant")]' in shown.decode()


def test_an_injected_fault_names_the_stage_and_the_users_line(
        pipeline: sgt.PipelineTester) -> None:
    with pytest.raises(sg.StageError) as caught:
        pipeline.run(diamond(), {"x": 1}, faults={add: sgt.raises(ValueError("disk full"))})
    assert (caught.value.stage, caught.value.site) == ("add", DIAMOND_ADD)
    assert (caught.value.error_type, caught.value.message) == ("ValueError", "disk full")
    assert str(caught.value) == f"stage 'add' ({DIAMOND_ADD}) raised ValueError: disk full"

    one_method = {"Scorer.scale": sgt.raises(ConnectionError)}
    with pytest.raises(sg.StageError) as scaled:
        pipeline.run(scoring(), PAYLOAD, faults=one_method)
    assert (scaled.value.stage, scaled.value.site) == ("Scorer", SCORER_SCALE)
    assert scaled.value.message == "injected fault"


@pytest.mark.servegraph_executors("local", "local-strict")
def test_a_fault_keeps_the_stages_shape(pipeline: sgt.PipelineTester) -> None:
    """A fault on a function stage, a class stage (every method) or one method: sync, async,
    batched or streaming, the stand-in is called as the stage would be."""
    stubbed = {"report": {"stubbed": True}, "pair": [2.5, 7.5]}
    assert pipeline.run(scoring(), PAYLOAD, faults={summarize: sgt.returns(
        {"stubbed": True})}) == stubbed
    assert pipeline.run(scoring(), PAYLOAD, faults={Scorer: sgt.returns(1.0)}) == {
        "report": {"query": 1.0, "best": 0, "scores": [1.0, 1.0, 1.0],
                   "words": ["a", "abcd", "ab"], "tag": "v1"}, "pair": [1.0, 1.0]}
    from tests.stream_stages import Words, shouted

    with pytest.raises(sg.StageError) as streamed:
        pipeline.run(shouted(), {"text": "a b"}, faults={Words: sgt.raises(OSError("eof"))})
    assert (streamed.value.stage, streamed.value.message) == ("Words", "eof")
    assert pipeline.run(shouted(), {"text": "a b"}, faults={Words: sgt.returns("x")}) == ["X"]


def test_strict_mode_catches_a_wrong_type_that_the_plain_run_lets_through(
        pipeline: sgt.PipelineTester) -> None:
    faults = {add: sgt.returns("ten")}
    if not pipeline.strict:  # local and Ray pass the value on as it is
        assert pipeline.run(diamond(), {"x": 1}, faults=faults) == "ten"
        return
    with pytest.raises(sg.EdgeTypeError) as caught:
        pipeline.run(diamond(), {"x": 1}, faults=faults)
    assert caught.value.stage == "add"
    assert caught.value.site == DIAMOND_ADD
    assert caught.value.message == ("strict mode: return value of add expects int, got str "
                                    "'ten' (Input should be a valid integer)")


def test_the_trace_lists_every_node_once_with_its_output(pipeline: sgt.PipelineTester) -> None:
    plan = sg.compile(scoring())
    trace = pipeline.trace(plan, PAYLOAD)
    assert trace.error is None and trace.output == EXPECTED
    assert sorted(span.node for span in trace.spans) == sorted(node.id for node in plan.nodes)
    assert trace.spans[0].label == "input: Request"
    outputs = {span.label: span.output for span in trace.spans if span.op != "select"}
    assert outputs == {"input: Request": stages.Request(**PAYLOAD), "Scorer.score": 2.5,
                       "map Scorer.score": [0.5, 2.0, 1.0], "Scorer.scale": 7.5,
                       "summarize": EXPECTED["report"]}
    mapped = trace.span("map Scorer.score")
    assert (mapped.calls, mapped.inputs) == (3, ["a", "abcd", "ab"])
    assert trace.span("Scorer.scale").kwargs == {"factor": 3}
    order = [span.label for span in trace.spans]
    assert order.index("Scorer.scale") > order.index("Scorer.score")
    assert order.index("summarize") > order.index("Scorer.scale")
    assert all(span.duration >= 0 for span in trace.spans)
    table = trace.table()
    assert table.splitlines()[1].split() == ["#", "node", "op", "label", "stage", "start",
                                             "ms", "took", "ms", "inputs", "output"]
    assert "map x3" in table and "[0.5, 2.0, 1.0]" in table

    failed = pipeline.trace(plan, {**PAYLOAD, "factor": -1})
    assert isinstance(failed.error, sg.StageError) and failed.output is None
    assert failed.span("Scorer.scale").error == str(failed.error)
    assert failed.span("summarize").error is not None

    taken = len(pipeline.traces)  # run() traces on the local executors; on Ray when asked
    assert pipeline.run(plan, PAYLOAD) == EXPECTED
    assert len(pipeline.traces) == taken + (0 if pipeline.on_ray else 1)
    assert pipeline.run(plan, PAYLOAD, trace=True) == EXPECTED
    assert pipeline.traces[-1].executor == pipeline.executor


def test_awaited_and_streamed_requests_answer_as_blocking_ones(
        pipeline: sgt.PipelineTester) -> None:
    """The tester calls its client's mirrored methods (`LocalExecutor` and `PipelineHandle`
    alike): call/acall, trace/atrace, stream/astream."""
    from tests.stream_stages import shouted

    graph, payload = diamond(), {"x": 1}
    streaming, text = shouted(), {"text": "a b"}
    assert pipeline.run(graph, payload) == pipeline.trace(graph, payload).output == 10
    assert list(pipeline.stream(streaming, text)) == ["A ", "B "]

    async def awaited() -> tuple[Any, ...]:
        with pytest.raises(sg.PipelineError, match=r"use `await pipeline\.arun\(graph"):
            pipeline.run(graph, payload)
        traced = await pipeline.atrace(graph, payload)
        chunks = [chunk async for chunk in pipeline.astream(streaming, text)]
        return (await pipeline.arun(graph, payload, trace=True), traced.output,
                traced.executor, chunks)

    assert asyncio.run(awaited()) == (10, 10, pipeline.executor, ["A ", "B "])


@pytest.mark.servegraph_executors("local")
def test_golden_files_of_the_plan_and_its_diagram(golden: sgt.Golden) -> None:
    golden.check(diamond(), "diamond")
    golden.check(scoring(), "scoring")


def test_the_normalised_plan_has_no_line_numbers_or_directories() -> None:
    text = sgt.normalized_plan(scoring())
    assert '"site": "stages.py: scaled = scorer.scale.bind(query, factor=inp.factor)"' in text
    assert "tests/stages.py" not in text and ":80:" not in text
    assert sgt.golden.normalized_site("/abs/dir/file.py:12: x = f.bind(y)") == \
        "file.py: x = f.bind(y)"
    assert sgt.golden.normalized_site("file.py:3") == "file.py"


def test_overrides_say_what_they_cannot_do() -> None:
    plan = sg.compile(scoring())
    with pytest.raises(sg.CompileError) as unknown:
        sgt.override(plan, {"Scorr": object()})
    assert str(unknown.value) == (
        "[override] graph: 'Scorr' is no stage of 'scoring', nor a method the pipeline calls on "
        "one\n  hint: stages: Scorer, summarize; a method: 'Stage.method'; a call node: the "
        "node object, or NodeKey('label') to replace its output with a constant")
    with pytest.raises(sg.CompileError, match="the override object has no method 'scale', "
                       "'score' that the pipeline calls on Scorer"):
        sgt.override(plan, {Scorer: object()})
    with pytest.raises(sg.CompileError) as label:
        sgt.override(plan, {sgt.node("Scorer.scor"): 1})
    assert str(label.value) == (
        "[override] graph: no call node of 'scoring' is labelled 'Scorer.scor'\n  hint: pass "
        "the node object itself, or a plan id (n0, n1, ...); labels: Scorer.score, "
        "map Scorer.score, Scorer.scale, summarize")
    with pytest.raises(sg.CompileError) as hang:
        sgt.override(plan, {Scorer: sgt.hangs(30)})
    assert "hangs(30) on Scorer, which has no timeout_s: the request would wait forever" in str(
        hang.value)


@pytest.mark.servegraph_executors("local", "local-strict")
def test_a_trace_shows_a_stream_as_its_reader_saw_it(pipeline: sgt.PipelineTester) -> None:
    from tests.stream_stages import counted

    trace = pipeline.trace(counted(), {"text": "a b c"})
    assert trace.labels == ["input", "input.text", "Words.words", "count"]
    assert (trace.span("Words.words").inputs, trace.span("Words.words").output) == (
        "a b c", "<stream>")
    assert (trace.span("count").inputs, trace.span("count").output) == ("<stream>", 3)

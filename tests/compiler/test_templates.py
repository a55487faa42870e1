"""The one argument-template codec (`compiler.templates`) and the plan's data: user data shaped
like a tag stays data through encode, decode, refs, the executors, overrides and JSON; a plan
read back from JSON equals the plan written, whatever the memory beside it holds."""

from __future__ import annotations

import math
import pickle
from fractions import Fraction
from typing import Any

import pytest

import servegraph as sg
from servegraph import testing as sgt
from servegraph.compiler import CompiledPipeline, templates
from servegraph.compiler.plan import PlanMemory
from servegraph.compiler.templates import RefSlots, ValueEncoder
from servegraph.errors import CompileError
from servegraph.visualize.model import diagram_of
from tests import gpu_graphs, stages, toolkit_stages
from tests.template_stages import LOOKALIKES, Unjsonable, echo, expected, hostile, inc


def _encoder() -> tuple[ValueEncoder, Any, Any, list[Any]]:
    _, nodes = hostile()
    constants: list[Any] = []
    ids = {nodes["first"].id: "n1", nodes["second"].id: "n2"}
    return ValueEncoder(ids, constants), nodes["first"], nodes["second"], constants


@pytest.mark.parametrize("value", LOOKALIKES, ids=repr)
def test_user_data_shaped_like_a_tag_is_a_constant(value: Any) -> None:
    encoder, _, _, constants = _encoder()
    template = encoder.encode(value)
    assert list(template) == ["$dict"]
    assert list(templates.refs(template)) == []
    assert templates.decode(template) == value
    assert constants == []


def test_a_template_is_one_tag_and_user_keys_stay_under_dict() -> None:
    encoder, first, second, _ = _encoder()
    assert encoder.encode({"ref": first}) == {"$dict": {"ref": {"$ref": "n1"}}}
    assert encoder.encode({"ref": "n1"}) == {"$dict": {"ref": {"$const": "n1"}}}
    assert encoder.encode({"$ref": second}) == {"$dict": {"$ref": {"$ref": "n2"}}}
    assert encoder.encode(("ref", first)) == {"$tuple": [{"$const": "ref"}, {"$ref": "n1"}]}
    assert encoder.encode(first) == templates.ref("n1")
    assert templates.ref_of(encoder.encode(first)) == "n1"
    assert templates.ref_of(encoder.encode({"$ref": first})) is None


def test_refs_come_in_order_and_decode_reads_them_from_the_values() -> None:
    encoder, first, second, _ = _encoder()
    value = [{"ref": first}, {"dict": {"list": [second, {"$ref": first}]}}, ("const", second)]
    template = encoder.encode(value)
    assert list(templates.refs(template)) == ["n1", "n2", "n1", "n2"]
    assert list(templates.refs(template, templates.ref("n0"))) == ["n1", "n2", "n1", "n2", "n0"]
    assert templates.decode(template, {"n1": "A", "n2": "B"}) == [
        {"ref": "A"}, {"dict": {"list": ["B", {"$ref": "A"}]}}, ("const", "B")]
    with pytest.raises(KeyError):
        templates.decode(template)


def test_builders_rebuild_the_arguments_from_the_leaves() -> None:
    encoder, first, second, _ = _encoder()
    args = [encoder.encode({"ref": first}), encoder.encode([second, first])]
    kwargs = {"k": encoder.encode({"$const": second})}
    slots = RefSlots()
    build = templates.call_builder(args, kwargs, slots)
    assert slots == ["n1", "n2"]
    assert build(["A", "B"]) == (({"ref": "A"}, ["B", "A"]), {"k": {"$const": "B"}})


def test_plain_arguments_are_the_leaves_and_a_repeated_one_is_not() -> None:
    slots = RefSlots()
    build = templates.call_builder([templates.ref("a"), templates.ref("b")], {}, slots)
    leaves = ["A", "B"]
    assert build(leaves) == (("A", "B"), {})
    repeated = RefSlots()
    build = templates.call_builder([templates.ref("a"), templates.ref("a")], {}, repeated)
    assert repeated == ["a"]
    assert build(["A"]) == (("A", "A"), {})


def test_a_call_of_thousands_of_refs_compiles_in_linear_slots() -> None:
    args = [templates.ref(f"n{i % 3000}") for i in range(6000)]
    slots = RefSlots()
    build = templates.call_builder(args, {}, slots)
    assert len(slots) == 3000
    assert build(list(range(3000)))[0] == tuple(i % 3000 for i in range(6000))


def test_constants_json_cannot_hold_are_opaque_and_kept_in_memory() -> None:
    encoder, _, _, constants = _encoder()
    values = [{1, 2}, math.nan, math.inf, {1: "int key"}, object()]
    made = [encoder.encode(value) for value in values]
    assert [list(t) for t in made] == [["$opaque"]] * len(values)
    assert [t["$opaque"]["index"] for t in made] == list(range(len(values)))
    assert constants == values
    assert [templates.decode(t, constants=constants) for t in made][:4] == [
        {1, 2}, pytest.approx(math.nan, nan_ok=True), math.inf, {1: "int key"}]
    with pytest.raises(CompileError, match=r"the constant \{1, 2\} was not saved"):
        templates.decode(made[0])


@pytest.mark.parametrize("bad", [{"ref": "n0"}, {"const": 1}, {"$ref": "n0", "$const": 1},
                                 {}, ["$ref", "n0"], "n0"], ids=repr)
def test_what_is_not_a_template_is_an_error_not_a_guess(bad: Any) -> None:
    with pytest.raises(CompileError, match="is not an argument template"):
        templates.decode(bad)
    with pytest.raises(CompileError, match="is not an argument template"):
        list(templates.refs(bad))


def test_a_dict_keyed_ref_holding_a_node_runs_with_and_without_an_override() -> None:
    """The bug: an override walked templates by probing for a "ref" key, took the user's dict
    for a reference and failed with `TypeError: unhashable type: 'dict'`."""
    with sg.InputNode() as inp:
        a = inc.bind(inp.x)
        b = echo.bind({"ref": a})
    graph = sg.Graph(b, name="keyed_ref")
    assert sg.run_local(graph, {"x": 1}) == {"args": [{"ref": 2}], "kwargs": {}}
    assert sg.run_local(graph, {"x": 1}, overrides={a: 10}) == {"args": [{"ref": 10}],
                                                                 "kwargs": {}}
    executor = sg.LocalExecutor(graph, overrides={a: {"ref": "n0"}})
    assert executor.call({"x": 1}) == {"args": [{"ref": {"ref": "n0"}}], "kwargs": {}}


def test_the_hostile_graph_runs_locally_with_and_without_overrides() -> None:
    graph, nodes = hostile()
    first, second = nodes["first"], nodes["second"]
    payload = {"x": 1, "$ref": 5}
    assert sg.run_local(graph, payload) == expected(2, 6)
    assert sg.run_local(graph, payload, strict=True) == expected(2, 6)
    assert sg.run_local(graph, payload, overrides={first: {"ref": "n9"}}) == expected(
        {"ref": "n9"}, 6)
    lookalike = {"$opaque": {"index": 7, "repr": "x"}, "ref": [first.id]}
    both = {first: lookalike, second: ("const", {"$ref": "n0"})}
    assert sg.run_local(graph, payload, overrides=both) == expected(
        lookalike, ("const", {"$ref": "n0"}))
    plan = sgt.override(sg.compile(graph), both)
    assert [n.op for n in plan.nodes] == ["input", "const", "const", "call", "call"]


def test_the_diagram_draws_every_edge_of_a_lookalike_dict() -> None:
    graph, _ = hostile()
    plan = sg.compile(graph)
    labels = {node.id: node.label for node in plan.nodes}
    edges = {(labels[a], labels.get(b, b)) for a, b, _ in diagram_of(plan).edges}
    assert edges >= {("inc", "echo"), ("inc", "Holder.show"), ("Holder.show", "echo"),
                     ("echo", "out")}


def test_the_hostile_plan_round_trips_through_json_and_runs_from_it() -> None:
    graph, nodes = hostile()
    plan = sg.compile(graph)
    loaded = CompiledPipeline.model_validate_json(plan.model_dump_json())
    assert loaded == plan
    assert loaded.memory.objects == {}
    payload = {"x": 1, "$ref": 5}
    assert sg.run_local(loaded, payload) == sg.run_local(plan, payload) == expected(2, 6)
    overridden = sgt.override(plan, {nodes["first"]: {"ref": "n0"}})
    again = CompiledPipeline.model_validate_json(overridden.model_dump_json())
    assert again == overridden
    assert sg.run_local(again, payload) == expected({"ref": "n0"}, 6)


PLANS = ["diamond", "scoring", "batching", "unfused", "gpu_layout", "autoscaled", "unbounded",
         "gpu_fake", "const_node", "opaque_const_node", "opaque", "hostile", "search", "charlm",
         "digits"]


def _graphs() -> dict[str, CompiledPipeline]:
    from servegraph.pipelines import charlm, digits, search

    cluster = sg.ClusterSpec(gpus=4, gpu_memory="24GiB")
    with sg.InputNode() as inp:
        opaque = echo.bind(inp.x, {"set": {1, 2}, "obj": Unjsonable(), "f": 0.1 + 0.2,
                                    "t": (1, (2.5, "x")), "nested": {"a": [{"b": None}]}})
    constant_graph = stages.diamond()
    doubled = next(n for n in constant_graph.nodes if getattr(n, "label", "") == "double")
    return {
        "diamond": sg.compile(stages.diamond()),
        "scoring": sg.compile(stages.scoring()),
        "batching": sg.compile(stages.batch_probe()),
        "unfused": sg.compile(stages.scoring(), fuse=False),
        "gpu_layout": sg.compile(gpu_graphs.rag, cluster=cluster),
        "autoscaled": sg.compile(gpu_graphs.scaled, cluster=cluster),
        "unbounded": sg.compile(gpu_graphs.caption),
        "gpu_fake": sgt.override(sg.compile(toolkit_stages.search()),
                                 {toolkit_stages.GpuEmbedder: toolkit_stages.CpuEmbedder}),
        "const_node": sgt.override(sg.compile(constant_graph), {doubled: 0.5}),
        "opaque_const_node": sgt.override(sg.compile(stages.diamond()),
                                          {sgt.node("double"): Fraction(1, 2)}),
        "opaque": sg.compile(sg.Graph(opaque, name="opaque")),
        "hostile": sg.compile(hostile()[0]),
        "search": sg.compile(search.graph),
        "charlm": sg.compile(charlm.graph),
        "digits": sg.compile(digits.graph, cluster=cluster),
    }


@pytest.fixture(scope="module")
def plans() -> dict[str, CompiledPipeline]:
    made = _graphs()
    assert list(made) == PLANS
    return made


@pytest.mark.parametrize("name", PLANS)
def test_a_plan_read_back_from_json_equals_the_plan_written(
        plans: dict[str, CompiledPipeline], name: str) -> None:
    plan = plans[name]
    loaded = CompiledPipeline.model_validate_json(plan.model_dump_json())
    assert loaded == plan
    assert hash(loaded) == hash(plan)
    assert loaded.model_dump() == plan.model_dump()  # every field, tuples and floats included
    assert loaded.model_dump_json() == plan.model_dump_json()
    assert {plan: name}[loaded] == name


def test_plans_differ_when_their_data_does(plans: dict[str, CompiledPipeline]) -> None:
    assert plans["diamond"] != plans["const_node"]
    assert plans["scoring"] != plans["unfused"]
    assert len({plans["diamond"], sg.compile(stages.diamond()), plans["scoring"]}) == 2
    assert plans["diamond"] != plans["diamond"].model_dump()


def test_the_memory_is_beside_the_data_not_in_it(plans: dict[str, CompiledPipeline]) -> None:
    plan = plans["opaque"]
    assert isinstance(plan.memory, PlanMemory)
    assert [type(c) for c in plan.memory.constants] == [set, Unjsonable]
    assert "tests.template_stages:echo" in plan.memory.objects
    assert isinstance(plan.memory.graph, sg.Graph)
    emptied = plan.with_memory(PlanMemory())
    assert emptied == plan and emptied.memory.constants == ()
    assert plan.memory.constants  # the original keeps its own
    with pytest.raises(CompileError, match="was not saved with the plan"):
        sg.run_local(emptied, {"x": 1})


def test_a_pickled_plan_keeps_its_memory(plans: dict[str, CompiledPipeline]) -> None:
    """Serve replicas rebuild the plan from the pickled object: opaque constants and the
    override's objects must travel with it."""
    plan = plans["opaque_const_node"]
    copied = pickle.loads(pickle.dumps(plan))
    assert copied == plan
    assert copied.memory.constants == (Fraction(1, 2),)
    assert sg.run_local(copied, {"x": 1}) == sg.run_local(plan, {"x": 1}) == Fraction(13, 2)
    assert copied.memory.node_ids == plan.memory.node_ids


def test_the_hostile_graph_answers_alike_on_every_executor(
        pipeline: sgt.PipelineTester) -> None:
    graph, nodes = hostile()
    payload = {"x": 1, "$ref": 5}
    assert pipeline.run(graph, payload) == expected(2, 6)
    overrides = {nodes["first"]: {"ref": "n0"}, nodes["second"]: Unjsonable()}
    assert pipeline.run(graph, payload, overrides=overrides) == expected(
        {"ref": "n0"}, Unjsonable())

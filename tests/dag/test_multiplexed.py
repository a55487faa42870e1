"""`sg.multiplexed` at bind and compile time: the loader's checks, the model id as an edge of
the graph, the plan's facts (loader, model id template, GPU memory per model times the models
a replica holds), the fusion rule, and a gallery of misuse, each with its exact error."""

from __future__ import annotations

import inspect

import pytest

import servegraph as sg
from servegraph.executors.program import Program
from tests import multiplex_stages as ms

HERE = "tests/dag/test_multiplexed.py"


def _line(text: str) -> str:
    lines = inspect.getsource(inspect.getmodule(_line)).splitlines()  # type: ignore[arg-type]
    number = next(i for i, line in enumerate(lines, 1) if text in line)
    return f"{HERE}:{number}: {lines[number - 1].strip()}"


def test_the_model_id_is_an_edge_of_the_graph() -> None:
    with sg.InputNode() as inp:
        call = ms.Heads.bind().predict.options(model_id=inp.tenant).bind(inp.text)
    assert [node.label for node in call.upstream()] == ["input.text", "input.tenant"]
    plan = sg.compile(sg.Graph(call))
    nodes = {node.label: node for node in plan.nodes}
    assert nodes["Heads.predict"].model_id == {"$ref": nodes["input.tenant"].id}
    assert nodes["Heads.predict"].args == [{"$ref": nodes["input.text"].id}]
    assert not any(node.lazy for node in plan.nodes)  # read only as a model id, still eager
    step = Program(plan).by_id[nodes["Heads.predict"].id]
    assert step.refs == (nodes["input.tenant"].id, nodes["input.text"].id)
    assert step.model_id(["a", "hi"]) == "a"  # type: ignore[misc]
    assert step.build(["a", "hi"]) == (("hi",), {})  # type: ignore[misc]


def test_a_constant_model_id_and_a_stages_output() -> None:
    plan = sg.compile(ms.routed_graph())
    nodes = {node.label: node for node in plan.nodes}
    assert nodes["Heads.predict"].model_id == {"$ref": nodes["pick_tenant"].id}
    with sg.InputNode() as inp:
        call = ms.Heads.bind().predict.options(model_id="a").bind(inp.text)
    assert sg.compile(sg.Graph(call)).nodes[-1].model_id == {"$const": "a"}


def test_the_plan_records_the_loader_and_never_fuses_the_stage() -> None:
    plan = sg.compile(ms.routed_graph())
    heads = plan.stage("Heads")
    assert heads.multiplexed is not None
    assert (heads.multiplexed.loader, heads.multiplexed.max_models_per_replica) == ("load", 3)
    assert heads.fused_into is None
    assert heads.fusion == ("multiplexed (@sg.multiplexed): Serve routes each model id to a "
                            "replica that holds the model")
    assert plan.stage("pick_tenant").fused_into == "routed_driver"
    assert sg.CompiledPipeline.model_validate_json(plan.model_dump_json()) == plan
    deployment = plan.explain().splitlines()[2]
    assert deployment.startswith("  Heads ")
    assert deployment.endswith("multiplexed: up to 3 models per replica (load)")


def test_gpu_memory_counts_each_model_a_replica_holds() -> None:
    graph = sg.Graph(ms.Heads.options(gpu_memory="2GiB", num_replicas=2).bind()
                     .predict.options(model_id="a").bind("x"))
    plan = sg.compile(graph, cluster=sg.ClusterSpec(gpus=2, gpu_memory="8GiB"))
    facts = plan.stage("Heads").resources
    assert (facts.gpu_memory, facts.models_per_replica, facts.gpus) == (6 * 2**30, 3, 0.75)
    assert plan.gpu_layout is not None
    assert [[(r.gpus, r.memory) for r in gpu.replicas] for gpu in plan.gpu_layout.gpus] == [
        [(0.75, 6 * 2**30)], [(0.75, 6 * 2**30)]]  # 3 models x 2GiB: one replica a GPU


def test_models_that_do_not_fit_one_gpu_name_the_models() -> None:
    graph = sg.Graph(ms.Heads.options(gpu_memory="3GiB").bind()
                     .predict.options(model_id="a").bind("x"))
    with pytest.raises(sg.CompileError) as caught:
        sg.compile(graph, cluster=sg.ClusterSpec(gpus=1, gpu_memory="8GiB"))
    assert "gpu_memory=3GiB x 3 models is more than one GPU holds (8GiB, the smallest in " \
        "the cluster spec)" in str(caught.value)


# --- a gallery of misuse ---------------------------------------------------------------------


def test_a_model_id_on_a_stage_without_a_loader() -> None:
    with sg.InputNode() as inp:
        out = ms.Plain.bind().predict.options(model_id=inp.tenant).bind(inp.text)
    with pytest.raises(sg.CompileError) as caught:
        sg.compile(sg.Graph(out))
    assert str(caught.value) == (
        f"[validate] stage 'Plain' ({_line('out = ms.Plain.bind().predict.options')}): "
        "Plain.predict is called with a model_id, but Plain declares no @sg.multiplexed "
        "loader\n  hint: add `@sg.multiplexed(max_models_per_replica=3) async def load(self, "
        "model_id)` to Plain, or drop .options(model_id=...)")


def test_two_loaders_on_one_class() -> None:
    with sg.InputNode() as inp:
        out = ms.TwoLoaders.bind().predict.bind(inp.text)
    with pytest.raises(sg.CompileError) as caught:
        sg.compile(sg.Graph(out))
    message = str(caught.value)
    assert message.startswith("[validate] stage 'TwoLoaders' (tests/multiplex_stages.py:")
    assert message.endswith(
        "@sg.multiplexed(max_models_per_replica=2)): TwoLoaders has 2 @sg.multiplexed loaders "
        "(load, load_again): a replica keeps one set of models\n  hint: keep one loader; load "
        "several parts of a model in it and return them together")


def test_a_loader_that_is_not_async() -> None:
    with pytest.raises(sg.BindError) as caught:
        class Stage:
            @sg.multiplexed
            def load(self, model_id: str) -> str:
                return model_id
    assert str(caught.value) == (
        f"[bind] graph ({_line('            @sg.multiplexed')}): the @sg.multiplexed loader "
        "test_a_loader_that_is_not_async.<locals>.Stage.load is not `async def`\n  hint: "
        "declare it `async def load(self, model_id: str)` (as serve.multiplexed requires)")


def test_a_loader_that_does_not_take_one_model_id() -> None:
    with pytest.raises(sg.BindError, match=r"must take one model id after self, not "
                       r"\(self, model_id, version\)"):
        class Stage:
            @sg.multiplexed(max_models_per_replica=2)
            async def load(self, model_id: str, version: int) -> str:
                return model_id


def test_max_models_per_replica_out_of_range() -> None:
    with pytest.raises(sg.OptionsError, match="max_models_per_replica=0 is out of range"):
        sg.multiplexed(max_models_per_replica=0)


def test_a_model_id_on_a_function_stage() -> None:
    with pytest.raises(sg.BindError) as caught:
        ms.pick_tenant.options(model_id="a")
    assert str(caught.value) == (
        f"[bind] stage 'pick_tenant' ({_line('ms.pick_tenant.options(model_id=')}): model_id "
        "on the stage pick_tenant: a model id is given per call, to a method of a class stage "
        "with an @sg.multiplexed loader\n  hint: stage.method.options(model_id=inp.tenant)"
        ".bind(...) on a bound class that declares `@sg.multiplexed async def load(self, "
        "model_id)`")


def test_a_model_id_that_is_not_a_string_or_a_node() -> None:
    with pytest.raises(sg.BindError, match="model_id=3: a model id is a non-empty string"):
        ms.Heads.bind().predict.options(model_id=3)


def test_a_batched_or_streaming_call_takes_no_model_id() -> None:
    with sg.InputNode() as inp:
        batched = ms.Heads.bind().batched.options(model_id=inp.tenant).bind(inp.text)
    with pytest.raises(sg.CompileError, match=r"Heads\.batched is batched with sg\.batch: one "
                       r"batch would mix calls for several models"):
        sg.compile(sg.Graph(batched))

"""A gallery of bad pipelines: each fails before anything runs, with the exact message naming
the pass, the stage, the user's source line and a fix."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import servegraph as sg
from tests import bad_stages
from tests.bad_stages import (
    Encoder,
    Inverted,
    TooManyGpus,
    bad_memory,
    both_scalings,
    consume,
    lengths,
    no_replicas,
    produce,
    typo,
)
from tests.sites import at


def here(code: str) -> str:
    return at(__file__, code)


def declared(code: str) -> str:
    return at(bad_stages.__file__, code)


def test_type_mismatch_between_stages() -> None:
    with sg.InputNode() as inp:
        p = produce.bind(inp.text)
        c = consume.bind(p)
    with pytest.raises(sg.TypeMismatchError) as caught:
        sg.compile(sg.Graph(c))
    assert str(caught.value) == (
        f"[typecheck] stage 'consume' ({here('c = consume.bind(p)')}): parameter 'count' of "
        f"consume expects int, but the value of produce ({here('p = produce.bind(inp.text)')})"
        " is str\n  hint: change the annotation of 'count' or of produce's return type, or put"
        " a stage between them that converts the value"
    )


def test_map_element_type_mismatch() -> None:
    with sg.InputNode() as inp:
        counts = lengths.bind(inp.texts)
        shouted = sg.map(produce, counts)
    with pytest.raises(sg.TypeMismatchError) as caught:
        sg.compile(sg.Graph(shouted))
    assert str(caught.value) == (
        f"[typecheck] stage 'map produce' ({here('shouted = sg.map(produce, counts)')}): "
        "parameter 'text' of produce expects str, but each element of lengths "
        f"({here('counts = lengths.bind(inp.texts)')}) is int\n  hint: change the annotation "
        "of 'text' or of lengths's return type, or put a stage between them that converts the "
        "value"
    )


def test_node_that_reaches_no_output() -> None:
    with sg.InputNode() as inp:
        kept = produce.bind(inp.text)
        lost = consume.bind(inp.n)
    with pytest.raises(sg.CompileError) as caught:
        sg.compile(sg.Graph(kept))
    assert str(caught.value) == (
        f"[validate] stage 'consume' ({here('lost = consume.bind(inp.n)')}): this call reaches "
        "no output of the graph\n  hint: pass its result to a stage that leads to an output, "
        "add it to sg.Graph's outputs, or remove it"
    )


def test_min_replicas_above_max_replicas() -> None:
    with sg.InputNode() as inp:
        out = Inverted.bind().__call__.bind(inp.x)
    with pytest.raises(sg.OptionsError) as caught:
        sg.compile(sg.Graph(out))
    line = declared('@sg.deployment(autoscaling_config={"min_replicas": 3, "max_replicas": 1})')
    assert str(caught.value) == (
        f"[validate] stage 'Inverted' ({line}): option autoscaling_config={{'min_replicas': 3, "
        "'max_replicas': 1}: min_replicas (3) > max_replicas (1)\n"
        "  hint: keep min_replicas <= initial_replicas <= max_replicas"
    )


def test_fractional_gpus_above_one() -> None:
    with sg.InputNode() as inp:
        out = TooManyGpus.bind().__call__.bind(inp.x)
    with pytest.raises(sg.OptionsError) as caught:
        sg.compile(sg.Graph(out))
    line = declared('@sg.deployment(ray_actor_options={"num_gpus": 1.5})')
    assert str(caught.value) == (
        f"[validate] stage 'TooManyGpus' ({line}): option ray_actor_options.num_gpus=1.5: "
        "num_gpus=1.5 is a fraction above 1: Ray places a fraction on one GPU only, so use a "
        "whole number of GPUs or a fraction <= 1\n"
        "  hint: num_gpus is a fraction <= 1 or a whole number; num_cpus >= 0"
    )


def test_unknown_option_suggests_the_right_one() -> None:
    with sg.InputNode() as inp:
        out = typo.bind(inp.x)
    with pytest.raises(sg.OptionsError) as caught:
        sg.compile(sg.Graph(out))
    assert str(caught.value) == (
        f"[validate] stage 'typo' ({declared('@sg.deployment(num_replica=2)')}): unknown option "
        "'num_replica'\n  hint: did you mean 'num_replicas'?"
    )


def test_zero_replicas() -> None:
    with sg.InputNode() as inp:
        out = no_replicas.bind(inp.x)
    with pytest.raises(sg.OptionsError) as caught:
        sg.compile(sg.Graph(out))
    assert str(caught.value) == (
        f"[validate] stage 'no_replicas' ({declared('@sg.deployment(num_replicas=0)')}): option "
        "num_replicas=0: num_replicas must be at least 1, got 0\n"
        "  hint: use an integer >= 1, or 'auto' with autoscaling_config"
    )


def test_fixed_replicas_and_autoscaling_together() -> None:
    with sg.InputNode() as inp:
        out = both_scalings.bind(inp.x)
    with pytest.raises(sg.OptionsError) as caught:
        sg.compile(sg.Graph(out))
    line = declared('@sg.deployment(num_replicas=2, autoscaling_config={"min_replicas": 1, '
                    '"max_replicas": 4})')
    assert str(caught.value) == (
        f"[validate] stage 'both_scalings' ({line}): options: num_replicas and "
        "autoscaling_config together: give one (num_replicas='auto' or leave it out when "
        "autoscaling)\n  hint: see ray.serve.deployment for this option's values"
    )


def test_unreadable_gpu_memory() -> None:
    with sg.InputNode() as inp:
        out = bad_memory.bind(inp.x)
    with pytest.raises(sg.OptionsError) as caught:
        sg.compile(sg.Graph(out))
    line = declared('@sg.deployment(gpu_memory="six gigs")')
    assert str(caught.value) == (
        f"[validate] stage 'bad_memory' ({line}): option gpu_memory='six gigs': cannot read "
        "'six gigs' as a size; write bytes or e.g. '6GiB', '512MB'\n"
        "  hint: give bytes or a size such as '6GiB'"
    )


def test_class_bound_without_a_method_as_output() -> None:
    with sg.InputNode():
        enc = Encoder.bind()
    with pytest.raises(sg.BindError) as caught:
        sg.Graph(enc)
    assert str(caught.value) == (
        f"[bind] stage 'Encoder' ({here('enc = Encoder.bind()')}): output Encoder is a class "
        "bound to its constructor, not a call\n  hint: return a method call: "
        "encoder.method.bind(...)"
    )


def test_class_bound_but_never_called() -> None:
    with sg.InputNode() as inp:
        idle = Encoder.bind()
        used = produce.bind(inp.text)
    with pytest.raises(sg.CompileError) as caught:
        sg.compile(sg.Graph(used))
    assert str(caught.value) == (
        f"[validate] stage 'Encoder' ({here('idle = Encoder.bind()')}): Encoder is bound but "
        "none of its methods is called on the way to an output\n  hint: call a method and use "
        "the result: encoder.method.bind(...), or remove the binding"
    )


def test_class_node_passed_as_a_value() -> None:
    with sg.InputNode(), pytest.raises(sg.BindError) as caught:
        as_value = Encoder.bind()
        produce.bind(as_value)
    assert str(caught.value) == (
        f"[bind] stage 'produce' ({here('produce.bind(as_value)')}): Encoder (a class bound to "
        "its constructor) passed as a value\n  hint: call one of its methods and pass the "
        "result: encoder.method.bind(...)"
    )


def test_bind_on_an_already_bound_class() -> None:
    with sg.InputNode() as inp, pytest.raises(sg.BindError) as caught:
        Encoder.bind().bind(inp.text)
    assert str(caught.value) == (
        f"[bind] stage 'Encoder' ({here('Encoder.bind().bind(inp.text)')}): Encoder is already "
        "bound to its constructor arguments\n  hint: call a method: encoder.method.bind(...), "
        "or encoder.__call__.bind(...) for __call__"
    )


def test_input_node_used_outside_its_with_block() -> None:
    with sg.InputNode() as inp:
        assert inp.is_open
    assert not inp.is_open
    with pytest.raises(sg.BindError) as caught:
        produce.bind(inp.late)
    assert str(caught.value) == (
        f"[bind] stage 'produce' ({here('produce.bind(inp.late)')}): InputNode used outside its "
        "`with` block\n  hint: bind every stage inside `with sg.InputNode() as inp:`"
    )


def test_too_many_arguments() -> None:
    with sg.InputNode() as inp, pytest.raises(sg.BindError) as caught:
        consume.bind(inp.a, inp.b)
    assert str(caught.value) == (
        f"[bind] stage 'consume' ({here('consume.bind(inp.a, inp.b)')}): consume(count: int) ->"
        " int cannot take these arguments: too many positional arguments\n"
        "  hint: pass one argument per parameter of the stage's method"
    )


def test_misspelt_method() -> None:
    with sg.InputNode() as inp, pytest.raises(sg.BindError) as caught:
        Encoder.bind().encdoe.bind(inp.text)
    assert str(caught.value) == (
        f"[bind] stage 'Encoder' ({here('Encoder.bind().encdoe.bind(inp.text)')}): Encoder has "
        "no method 'encdoe'\n  hint: did you mean 'encode'?"
    )


def test_constructor_argument_from_the_request() -> None:
    with sg.InputNode() as inp, pytest.raises(sg.BindError) as caught:
        Encoder.bind(inp.dim)
    assert str(caught.value) == (
        f"[bind] stage 'Encoder' ({here('Encoder.bind(inp.dim)')}): constructor arguments hold "
        "a graph node; they are fixed when the replica starts\n"
        "  hint: pass per-request values to a method: stage.method.bind(value)"
    )


def test_batched_method_must_be_async() -> None:
    @sg.deployment
    class SyncBatcher:
        @sg.batch(max_batch_size=4)
        def lengths(self, texts: list[str]) -> list[int]:
            return [len(t) for t in texts]

    with sg.InputNode() as inp:
        sized = SyncBatcher.bind().lengths.bind(inp.text)
    with pytest.raises(sg.CompileError) as caught:
        sg.compile(sg.Graph(sized))
    assert str(caught.value) == (
        f"[validate] stage 'SyncBatcher.lengths' "
        f"({here('sized = SyncBatcher.bind().lengths.bind(inp.text)')}): SyncBatcher.lengths is "
        "batched with sg.batch but is not `async def`\n"
        "  hint: declare the batched method `async def` (as serve.batch requires)"
    )


class Query(BaseModel):
    query: str


def test_input_model_has_no_such_field() -> None:
    with sg.InputNode(Query) as inp:
        echoed = produce.bind(inp.qurey)
    with pytest.raises(sg.CompileError) as caught:
        sg.compile(sg.Graph(echoed))
    assert str(caught.value) == (
        f"[validate] stage 'input.qurey' ({here('echoed = produce.bind(inp.qurey)')}): the input "
        "model Query has no field 'qurey'\n  hint: did you mean 'query'?"
    )


def test_map_over_an_unbound_class() -> None:
    with sg.InputNode() as inp, pytest.raises(sg.BindError) as caught:
        sg.map(Encoder, inp.texts)
    assert str(caught.value) == (
        f"[bind] graph ({here('sg.map(Encoder, inp.texts)')}): sg.map cannot call "
        f"{Encoder!r}\n  hint: bind the class first: sg.map(Encoder.bind().method, items)"
    )


def test_two_deployments_with_one_explicit_name() -> None:
    with sg.InputNode() as inp:
        first = Encoder.options(name="enc").bind().encode.bind(inp.a)
        second = Encoder.options(name="enc").bind().encode.bind(inp.b)
    with pytest.raises(sg.OptionsError) as caught:
        sg.compile(sg.Graph([first, second]))
    line = here('second = Encoder.options(name="enc").bind().encode.bind(inp.b)')
    assert str(caught.value) == (
        f"[validate] stage 'enc' ({line}): two deployments are named 'enc'\n"
        "  hint: give each bound class its own name: Stage.options(name='...').bind()"
    )


def test_outputs_without_a_node() -> None:
    with pytest.raises(sg.BindError) as caught:
        sg.Graph([1, 2])
    assert str(caught.value) == (
        f"[bind] graph ({here('sg.Graph([1, 2])')}): the graph's outputs hold no node\n"
        "  hint: pass the node (or list/dict of nodes) the pipeline returns"
    )


def test_compile_needs_a_graph() -> None:
    with sg.InputNode() as inp:
        bare = produce.bind(inp.t)
    with pytest.raises(sg.BindError) as caught:
        sg.compile(bare)
    assert str(caught.value) == (
        f"[bind] graph ({here('sg.compile(bare)')}): sg.compile needs an sg.Graph, got CallNode"
        "\n  hint: wrap the output node: sg.compile(sg.Graph(out, name='...'))"
    )


def test_every_error_is_a_pipeline_error() -> None:
    for cls in (sg.CompileError, sg.BindError, sg.OptionsError, sg.TypeMismatchError,
                sg.StageError, sg.InputError, sg.EdgeTypeError):
        assert issubclass(cls, sg.PipelineError)
    for cls in (sg.BindError, sg.OptionsError, sg.TypeMismatchError):
        assert issubclass(cls, sg.CompileError)


def test_user_config_on_a_function_stage() -> None:
    with sg.InputNode() as inp:
        out = bad_stages.configured_function.bind(inp.x)
    with pytest.raises(sg.OptionsError) as caught:
        sg.compile(sg.Graph(out))
    line = declared('@sg.deployment(user_config={"threshold": 0.5})')
    assert str(caught.value) == (
        f"[validate] stage 'configured_function' ({line}): user_config on the function stage "
        "configured_function: Serve hands user_config to a class's `reconfigure` method\n"
        "  hint: make the stage a class with a `reconfigure(self, config)` method, or drop "
        "user_config"
    )


def test_user_config_on_a_class_without_reconfigure() -> None:
    with sg.InputNode() as inp:
        out = bad_stages.Unconfigurable.bind().__call__.bind(inp.x)
    with pytest.raises(sg.OptionsError) as caught:
        sg.compile(sg.Graph(out))
    assert caught.value.stage == "Unconfigurable"
    assert caught.value.site == declared(
        '@sg.deployment(user_config={"threshold": 0.7})')
    assert str(caught.value).endswith(
        "user_config on Unconfigurable, which has no `reconfigure` method to receive it\n"
        "  hint: add `def reconfigure(self, config)` to Unconfigurable (sync or async), or "
        "drop user_config"
    )


def test_version_is_refused_as_serve_refuses_it() -> None:
    with sg.InputNode() as inp:
        out = bad_stages.versioned.bind(inp.x)
    with pytest.raises(sg.OptionsError) as caught:
        sg.compile(sg.Graph(out))
    line = declared('@sg.deployment(version="v1")')
    assert str(caught.value) == (
        f"[validate] stage 'versioned' ({line}): version='v1': Ray Serve manages deployment "
        "versions itself and refuses this option when the deployment is created\n"
        "  hint: drop version; a `serve deploy` config with a changed user_config updates "
        "running replicas in place"
    )


def test_the_driver_takes_no_user_config() -> None:
    with sg.InputNode() as inp:
        out = bad_stages.Unconfigurable.bind().__call__.bind(inp.x)
    with pytest.raises(sg.OptionsError, match="option 'user_config' does not apply to the "
                       "driver"):
        sg.Graph(out, name="g", driver={"user_config": {"a": 1}})

"""Building graphs: bind never mutates, sites are recorded, selects, nesting, options."""

from __future__ import annotations

import inspect
import os

import pytest
from pydantic import ValidationError
from ray import serve
from ray.serve.config import AutoscalingConfig

import servegraph as sg
from servegraph.dag import CallNode, ClassNode, DeploymentOptions, Op, SelectNode
from servegraph.dag.options import AUTO_AUTOSCALING_DEFAULTS, SERVEGRAPH_OPTIONS
from tests.stages import Inc, Scorer, add, double


def test_bind_returns_new_nodes_and_never_mutates() -> None:
    with sg.InputNode() as inp:
        scorer = Scorer.bind(1.0)
        first = scorer.score.bind(inp.a)
        before = (scorer.args, dict(scorer.kwargs), first.args)
        second = scorer.score.bind(inp.b)
    assert isinstance(scorer, ClassNode) and isinstance(first, CallNode)
    assert first is not second and first.call.group is second.call.group is scorer
    assert (scorer.args, dict(scorer.kwargs), first.args) == before
    with pytest.raises(AttributeError):
        first.op = Op.MAP  # type: ignore[misc]


def test_every_node_records_the_users_line() -> None:
    with sg.InputNode() as inp:
        node = double.bind(inp.x)
    line = inspect.currentframe().f_lineno - 1  # type: ignore[union-attr]
    assert node.site.file == os.path.relpath(__file__)
    assert node.site.line == line
    assert node.site.code == "node = double.bind(inp.x)"
    assert str(node.site) == f"{os.path.relpath(__file__)}:{line}: node = double.bind(inp.x)"


def test_input_selects_attribute_key_and_index() -> None:
    with sg.InputNode() as inp:
        by_attr, by_key, by_index = inp.query, inp["documents"], inp[0]
        nested = inp.doc["title"][2]
    assert [type(n) for n in (by_attr, by_key, by_index)] == [SelectNode] * 3
    assert [n.label for n in (by_attr, by_key, by_index, nested)] == [
        "input.query", "input['documents']", "input[0]", "input.doc['title'][2]"]
    graph = sg.Graph([by_attr, by_key, by_index, nested])
    payload_dict = {"query": "q", "documents": ["d"], 0: "zero", "doc": {"title": "abcd"}}
    assert sg.run_local(graph, payload_dict) == ["q", ["d"], "zero", "c"]


def test_fan_out_and_fan_in_edges() -> None:
    with sg.InputNode() as inp:
        a = Inc.bind().__call__.bind(inp.x)
        left, right = double.bind(a), double.bind(a)
        joined = add.bind(left, right)
    assert joined.upstream() == [left, right]
    assert left.upstream() == right.upstream() == [a]
    graph = sg.Graph(joined)
    assert graph.nodes.index(a) < graph.nodes.index(left) < graph.nodes.index(joined)
    assert sg.run_local(graph, {"x": 1}) == 8


def test_nested_lists_and_dicts_of_nodes_are_edges() -> None:
    @sg.deployment
    def pack(items: list[int], table: dict[str, int]) -> int:
        return sum(items) + sum(table.values())

    with sg.InputNode() as inp:
        a, b = double.bind(inp.x), double.bind(inp.y)
        out = pack.bind([a, b, 100], {"a": a, "k": 1})
    assert out.upstream() == [a, b]
    assert sg.run_local(sg.Graph(out), {"x": 1, "y": 2}) == 2 + 4 + 100 + 2 + 1


def test_outputs_as_node_list_or_dict() -> None:
    with sg.InputNode() as inp:
        single = double.bind(inp.x)
    assert sg.run_local(sg.Graph(single), {"x": 2}) == 4
    with sg.InputNode() as inp:
        a = double.bind(inp.x)
        b = add.bind(a, 1)
    assert sg.run_local(sg.Graph([a, b, "const"]), {"x": 2}) == [4, 5, "const"]
    assert sg.run_local(sg.Graph({"a": a, "nested": {"b": b}}), {"x": 2}) == {
        "a": 4, "nested": {"b": 5}}


def test_decorator_keeps_the_class_and_function_plain() -> None:
    assert isinstance(Scorer, type) and Scorer(2.0).scale(3.0, factor=2) == 6.0
    assert inspect.iscoroutinefunction(double)
    spec = Scorer.__servegraph_deployment__
    assert spec.name == "Scorer" and spec.raw_options == {"max_ongoing_requests": 64}
    renamed = Scorer.options(name="fast", num_replicas=3)
    assert renamed.raw_options == {"max_ongoing_requests": 64, "name": "fast", "num_replicas": 3}
    assert spec.raw_options == {"max_ongoing_requests": 64}


def test_options_accept_every_ray_serve_deployment_keyword() -> None:
    ray_keywords = set(inspect.signature(serve.deployment).parameters) - {"_func_or_class"}
    ours = set(DeploymentOptions.model_fields)
    assert ray_keywords <= ours
    assert ours - ray_keywords == SERVEGRAPH_OPTIONS == {"gpu_memory", "fuse", "timeout_s",
                                                         "max_retries"}


def test_options_validate_and_convert() -> None:
    options = DeploymentOptions.model_validate(
        {"num_replicas": "auto", "autoscaling_config": {"min_replicas": 1, "max_replicas": 4,
                                                        "upscale_delay_s": 2},
         "ray_actor_options": {"num_gpus": 0.25, "num_cpus": 2}, "gpu_memory": "6GiB",
         "fuse": False, "max_ongoing_requests": 32})
    assert options.gpu_memory == 6 * 2**30
    assert options.serve_options() == {
        "num_replicas": "auto", "max_ongoing_requests": 32,
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "upscale_delay_s": 2},
        "ray_actor_options": {"num_gpus": 0.25, "num_cpus": 2.0},
    }
    assert DeploymentOptions(ray_actor_options={"num_gpus": 2}).ray_actor_options.num_gpus == 2


def test_auto_autoscaling_defaults_are_serves_own() -> None:
    """The dag layer writes Serve's num_replicas="auto" defaults out (it imports no ray)."""
    assert AUTO_AUTOSCALING_DEFAULTS == AutoscalingConfig.default().model_dump(
        exclude_unset=True)


def test_serve_options_hold_only_what_the_user_set() -> None:
    """Our models' defaults (a plain autoscaling_config's max_replicas=1) never reach Serve,
    which would take them as the user's and not apply its own (100 under "auto")."""
    options = DeploymentOptions.model_validate(
        {"num_replicas": "auto", "autoscaling_config": {"target_ongoing_requests": 2},
         "ray_actor_options": {"num_cpus": None}, "max_ongoing_requests": None})
    assert options.serve_options() == {
        "num_replicas": "auto", "autoscaling_config": {"target_ongoing_requests": 2.0},
        "ray_actor_options": {}}
    auto = options.autoscaling()
    assert (auto.min_replicas, auto.initial_replicas, auto.max_replicas) == (1, None, 100)
    assert DeploymentOptions(num_replicas=2).autoscaling() is None


def test_autoscaling_bounds_are_judged_on_the_values_serve_uses() -> None:
    """num_replicas="auto" with min_replicas=5 is fine (max is then 100); the same
    autoscaling_config alone is not (max is then 1), as Serve judges them."""
    auto = DeploymentOptions.model_validate(
        {"num_replicas": "auto", "autoscaling_config": {"min_replicas": 5}})
    assert auto.serve_options() == {"num_replicas": "auto",
                                    "autoscaling_config": {"min_replicas": 5}}
    for options, message in [
        ({"autoscaling_config": {"min_replicas": 5}},
         "min_replicas (5) > max_replicas (1); max_replicas is Serve's default"),
        ({"num_replicas": "auto", "autoscaling_config": {"min_replicas": 200}},
         "min_replicas (200) > max_replicas (100); max_replicas is Serve's default for "
         "num_replicas='auto'"),
        ({"num_replicas": "auto", "autoscaling_config": {"initial_replicas": 101}},
         "initial_replicas (101) is outside [min_replicas=1, max_replicas=100]; min_replicas "
         "and max_replicas are Serve's defaults for num_replicas='auto'"),
    ]:
        with pytest.raises(ValidationError) as caught:
            DeploymentOptions.model_validate(options)
        assert caught.value.errors()[0]["msg"] == f"Value error, {message}"
        assert caught.value.errors()[0]["loc"] == ("autoscaling_config",)


def test_map_builds_a_map_node_on_the_shared_group() -> None:
    with sg.InputNode() as inp:
        scorer = Scorer.bind(1.0)
        mapped = sg.map(scorer.score, inp.words)
    assert mapped.op is Op.MAP and mapped.call.group is scorer
    assert mapped.label == "map Scorer.score"

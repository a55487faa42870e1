"""The compiled plan: deployments, Serve options per role, the schedule, JSON round trip."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any

import pytest
from ray import serve

import servegraph as sg
from servegraph.compiler import PASSES, CompiledPipeline, ReplicaRange, StageResources
from servegraph.compiler.passes.lower import DRIVER_MAX_ONGOING_REQUESTS
from servegraph.compiler.types import is_assignable
from tests.stages import diamond, scoring


def test_one_deployment_per_actor_group_plus_a_driver() -> None:
    plan = sg.compile(scoring())
    assert plan.passes == ["validate", "typecheck", "resources", "pack", "fuse", "lower"]
    assert list(PASSES) == ["validate", "typecheck", "resources", "capacity", "pack", "fuse",
                            "lower"]  # capacity runs only with a profile
    assert [(s.name, s.kind, s.methods) for s in plan.deployments] == [
        ("Scorer", "class", ["scale", "score"]), ("summarize", "function", ["__call__"])]
    scorer = plan.stage("Scorer")
    assert scorer.import_path == "tests.stages:Scorer"
    assert scorer.init_args == [{"$const": 0.5}]
    assert scorer.options == {"name": "Scorer", "max_ongoing_requests": 64}
    assert scorer.batching["score"].max_batch_size == 8
    assert plan.driver.name == "scoring_driver"
    assert plan.driver.options == {"max_ongoing_requests": DRIVER_MAX_ONGOING_REQUESTS,
                                   "max_queued_requests": 1000,
                                   "backpressure_config": {"status_code": 503,
                                                           "retry_after_s": 1},
                                   "health_check_period_s": 1.0,
                                   "ray_actor_options": {"num_cpus": 0}}


def echo(x: int) -> int:
    return x


AUTOSCALED = {"autoscaling": True}
SCALINGS = [
    ({}, ReplicaRange()),
    ({"num_replicas": 3}, ReplicaRange(start=3, min=3, max=3)),
    ({"autoscaling_config": {"target_ongoing_requests": 2}}, ReplicaRange(**AUTOSCALED)),
    ({"autoscaling_config": {"min_replicas": 2, "max_replicas": 5}},
     ReplicaRange(start=2, min=2, max=5, **AUTOSCALED)),
    ({"autoscaling_config": {"min_replicas": 0, "initial_replicas": 2, "max_replicas": 3}},
     ReplicaRange(start=2, min=0, max=3, **AUTOSCALED)),
    ({"num_replicas": "auto"}, ReplicaRange(max=100, **AUTOSCALED)),
    ({"num_replicas": "auto", "autoscaling_config": {"target_ongoing_requests": 2}},
     ReplicaRange(max=100, **AUTOSCALED)),
    ({"num_replicas": "auto", "autoscaling_config": {"min_replicas": 5}},
     ReplicaRange(start=5, min=5, max=100, **AUTOSCALED)),
    ({"num_replicas": "auto", "autoscaling_config": {"max_replicas": 4, "initial_replicas": 3}},
     ReplicaRange(start=3, min=1, max=4, **AUTOSCALED)),
]


@pytest.mark.parametrize(("options", "replicas"), SCALINGS)
def test_replica_facts_are_the_ones_serve_uses(options: dict[str, Any],
                                               replicas: ReplicaRange) -> None:
    """The resources pass fills in Serve's defaults once; the plan's options keep only what
    the user set, and Serve, given them, runs the replicas the facts say."""
    with sg.InputNode() as inp:
        out = sg.deployment(**options)(echo).bind(inp)
    stage = sg.compile(sg.Graph(out)).stage("echo")
    assert stage.resources == StageResources(replicas=replicas)
    assert stage.options == {"name": "echo"} | options
    deployed = serve.deployment(**stage.options)(echo)
    schema = importlib.import_module("ray.serve.deployment").deployment_to_schema(deployed)
    if replicas.autoscaling:
        auto = schema.autoscaling_config
        start = auto.min_replicas if auto.initial_replicas is None else auto.initial_replicas
        assert (start, auto.min_replicas, auto.max_replicas) == (
            replicas.start, replicas.min, replicas.max)
    else:
        assert deployed.num_replicas == replicas.start


def test_cpus_and_gpus_per_replica_are_serves() -> None:
    """num_cpus unset is Serve's 1 CPU; the driver reserves only what fused stages declared."""
    @sg.deployment(ray_actor_options={"num_cpus": 0.5, "num_gpus": 0.25})
    def shared(x: int) -> int:
        return x

    with sg.InputNode() as inp:
        out = shared.bind(sg.deployment(echo).bind(inp))
    plan = sg.compile(sg.Graph(out, name="facts"), fuse=False)
    assert plan.stage("echo").resources == StageResources(cpus=1.0)
    assert plan.stage("shared").resources == StageResources(cpus=0.5, gpus=0.25)
    assert plan.driver.resources == StageResources(cpus=0.0)
    fused = sg.compile(sg.Graph(out, name="facts"))  # echo, light, declared no CPU: adds none
    assert fused.stage("echo").fused_into == "facts_driver"
    assert fused.driver.resources == StageResources(cpus=0.0)


def test_batched_stage_gets_room_for_two_batches() -> None:
    @sg.deployment
    class Batched:
        @sg.batch(max_batch_size=16)
        async def run(self, xs: list[int]) -> list[int]:
            return xs

    with sg.InputNode() as inp:
        out = Batched.bind().run.bind(inp.x)
    assert sg.compile(sg.Graph(out)).stage("Batched").options["max_ongoing_requests"] == 1000


def test_explain_says_a_failing_batch_is_split_and_how_deep() -> None:
    assert ("  Scorer               class    1 replica, 1 CPU, batch score <= 8 within 10 ms, "
            "failures isolated by splitting the batch in halves (at most 3 deep), "
            "max_ongoing_requests=64") in sg.compile(scoring()).explain().splitlines()


def test_schedule_is_topological_with_argument_templates() -> None:
    plan = sg.compile(scoring())
    assert [(n.id, n.op, n.label) for n in plan.nodes] == [
        ("n0", "input", "input: Request"),
        ("n1", "select", "input.query"),
        ("n2", "call", "Scorer.score"),
        ("n3", "select", "input.words"),
        ("n4", "map", "map Scorer.score"),
        ("n5", "select", "input.factor"),
        ("n6", "call", "Scorer.scale"),
        ("n7", "select", "input.words"),
        ("n8", "call", "summarize"),
    ]
    summarize = plan.nodes[8]
    assert summarize.args == [
        {"$ref": "n6"}, {"$ref": "n4"},
        {"$dict": {"words": {"$ref": "n7"}, "tag": {"$const": "v1"}}}]
    assert plan.nodes[6].kwargs == {"factor": {"$ref": "n5"}}
    assert plan.outputs == {"$dict": {"report": {"$ref": "n8"},
                                     "pair": {"$list": [{"$ref": "n2"}, {"$ref": "n6"}]}}}


def test_plan_round_trips_through_json_and_runs_from_it() -> None:
    plan = sg.compile(scoring())
    text = plan.model_dump_json()
    loaded = CompiledPipeline.model_validate_json(text)
    assert loaded.model_dump() == plan.model_dump()
    assert json.loads(loaded.model_dump_json()) == json.loads(text)
    payload = {"query": "abc", "words": ["x", "yy"], "factor": 2}
    assert sg.run_local(loaded, payload) == sg.run_local(plan, payload)


def test_plan_from_json_runs_in_a_fresh_process() -> None:
    text = sg.compile(diamond()).model_dump_json()
    code = ("import sys, servegraph as sg; from servegraph.compiler import CompiledPipeline; "
            "plan = CompiledPipeline.model_validate_json(sys.stdin.read()); "
            "print(sg.run_local(plan, {'x': 4}))")
    done = subprocess.run([sys.executable, "-c", code], input=text, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "25"


def test_unannotated_edges_pass_and_types_are_compared_like_pydantic() -> None:
    assert is_assignable(int, float)
    assert is_assignable(list[int], list[float])
    assert is_assignable(int | None, float | None)
    assert not is_assignable(str, int)
    assert not is_assignable(list[str], list[int])
    assert is_assignable(dict[str, int], dict[str, float])
    assert not is_assignable(int | str, int)
    assert is_assignable(tuple[int, ...], list[float])

    @sg.deployment
    def loose(x):  # type: ignore[no-untyped-def]
        return x

    @sg.deployment
    def strict_int(x: int) -> int:
        return x

    with sg.InputNode() as inp:
        out = strict_int.bind(loose.bind(inp.x))
    assert sg.run_local(sg.compile(sg.Graph(out)), {"x": 3}) == 3

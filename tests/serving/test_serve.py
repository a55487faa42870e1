"""The Ray Serve runner on one shared Ray: bad input gets a 4xx, a failing stage a 5xx naming
it, and serving goes on. (Same results as the local executor over the handle and HTTP: the
diamond and scoring test of tests/testing/test_testing_toolkit.py runs on every executor.)"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from ray import serve

import servegraph as sg
from tests.stages import EXPECTED, PAYLOAD, batch_probe, diamond, scoring

pytestmark = pytest.mark.ray


def test_the_service_shows_its_plan_and_diagram(deploy: Callable[..., Any]) -> None:
    plan = sg.compile(diamond())
    handle = deploy(plan, name="shown", route_prefix="/shown")
    served = httpx.get(f"{handle.url}/-/plan", timeout=30)
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    assert served.json() == json.loads(plan.model_dump_json())
    if shutil.which("dot"):
        diagram = httpx.get(f"{handle.url}/-/graph.svg", timeout=30)
        assert diagram.status_code == 200
        assert diagram.headers["content-type"] == "image/svg+xml"
        assert diagram.content == sg.render(plan, format="svg")
    assert httpx.post(handle.url, json={"x": 0}, timeout=30).json() == 5


def test_bad_input_and_failing_stage_keep_the_service_serving(
        deploy: Callable[..., Any]) -> None:
    handle = deploy(scoring(), name="errors", route_prefix="/errors")
    with httpx.Client(timeout=30) as client:
        bad = client.post(handle.url, json={"query": "q", "words": "nope"},
                          headers={"x-request-id": "req-422"})
        assert bad.status_code == 422
        assert bad.json() == {
            "error": "request body does not fit tests.stages:Request: invalid words "
                     "(list_type)",
            "stage": None,
            "errors": [{"loc": ["words"], "msg": "Input should be a valid list",
                        "type": "list_type"}],
            "request_id": "req-422",
        }
        assert bad.headers["x-request-id"] == "req-422"

        not_json = client.post(handle.url, content=b"{nope", headers={"x-request-id": "r400"})
        assert not_json.status_code == 400
        assert not_json.json()["request_id"] == "r400"
        empty = client.post(handle.url, content=b"", headers={"x-request-id": "r400e"})
        assert (empty.status_code, empty.json()) == (400, {
            "error": "the request body is empty: POST a JSON body", "stage": None,
            "request_id": "r400e"})

        wrong_method = client.get(handle.url)
        assert wrong_method.status_code == 405

        failed = client.post(handle.url, json={**PAYLOAD, "factor": -1},
                             headers={"x-request-id": "req-500"})
        assert failed.status_code == 500
        body = failed.json()
        assert body["stage"] == "Scorer"
        assert body["request_id"] == "req-500"
        assert body["error"].startswith("stage 'Scorer' (tests/stages.py:")
        assert body["error"].endswith(
            "scaled = scorer.scale.bind(query, factor=inp.factor)) raised ValueError: factor "
            "must be >= 0, got -1")

        good = client.post(handle.url, json=PAYLOAD)
        assert good.status_code == 200
        assert good.json() == EXPECTED

    with pytest.raises(sg.StageError) as caught:
        handle.call({**PAYLOAD, "words": ["boom"]})
    assert caught.value.stage == "Scorer"
    assert caught.value.error_type == "ValueError"
    assert caught.value.message == "element 0 of the map: cannot score 'boom'"
    with pytest.raises(sg.InputError) as invalid:
        handle.call({"query": 1})
    assert [e["loc"] for e in invalid.value.errors] == [["query"], ["words"]]
    assert handle.call(PAYLOAD) == EXPECTED


def test_one_deployment_per_actor_group_plus_the_driver(deploy: Callable[..., Any]) -> None:
    plan = sg.compile(scoring(), fuse=False)
    deploy(plan, name="layout", route_prefix="/layout")
    status = serve.status().applications["layout"]
    assert sorted(status.deployments) == ["Scorer", "scoring_driver", "summarize"]
    assert {d.status.value for d in status.deployments.values()} == {"HEALTHY"}


def test_a_ray_decorated_class_keeps_its_options(deploy: Callable[..., Any]) -> None:
    from tests.ray_stages import RayDoubler, ray_doubler_graph

    spec = RayDoubler.__servegraph_deployment__
    assert spec.raw_options["num_replicas"] == 2
    handle = deploy(ray_doubler_graph(), name="raydec", route_prefix="/raydec")
    assert handle.call({"x": 21}) == 42
    replicas = serve.status().applications["raydec"].deployments["RayDoubler"].replica_states
    assert replicas == {"RUNNING": 2}


def test_sg_batch_becomes_serve_batch(deploy: Callable[..., Any]) -> None:
    graph = batch_probe()
    payload = {"first": 0, "items": list(range(7))}
    expected = {"one": 4, "sizes": [4] * 7}
    assert sg.run_local(graph, payload) == expected
    handle = deploy(graph, name="probe", route_prefix="/probe")
    assert handle.call(payload) == expected


def test_a_plan_too_big_for_the_cluster_fails_at_once(ray_serve: int) -> None:
    @sg.deployment(num_replicas=5, ray_actor_options={"num_gpus": 1, "num_cpus": 0.5})
    def on_gpu(x: int) -> int:
        return x

    with sg.InputNode() as inp:
        out = on_gpu.bind(inp.x)
    with pytest.raises(sg.DeployError) as caught:
        sg.serve(sg.Graph(out, name="toobig"))
    assert str(caught.value) == (
        "pipeline 'toobig' needs 5 GPU for its replicas (on_gpu 5 x 1), but the Ray cluster "
        "has 4; lower num_replicas or num_gpus, or serve it for a cluster spec: servegraph's "
        "embedded Ray gets its GPUs (logical ones: none need exist) (CLI: servegraph run "
        "MODULE:ATTR --gpus 5; Python: sg.serve(graph, cluster=sg.ClusterSpec(gpus=5))). A Ray "
        "that was running already (your ray.init, or RAY_ADDRESS) keeps the GPUs it started "
        "with: start it with ray.init(num_gpus=5) or ray start --num-gpus=5, servegraph's "
        "switches (servegraph.serving.env) set first")

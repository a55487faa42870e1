"""`sg.Graph(driver=...)`: the driver's own Serve options, validated as a stage's, laid over
servegraph's driver defaults, its replicas worked out by the resources pass's code and shown by
everything that reads a plan's facts (explain, Serve config, RayService, launcher, diagram)."""

from __future__ import annotations

from typing import Any

import pytest

import servegraph as sg
from servegraph.compiler.emit.rayservice import rayservice
from servegraph.compiler.emit.serve_config import app_config
from servegraph.compiler.explain import explain
from servegraph.compiler.passes.lower import DRIVER_MAX_QUEUED_REQUESTS
from servegraph.compiler.plan import ReplicaRange
from servegraph.errors import DeployError, OptionsError
from servegraph.serving.launch import check_fits, resources_needed
from servegraph.visualize.render_dot import to_dot


@sg.deployment(fuse=False)
def double(x: int) -> int:
    return 2 * x


@sg.deployment
def plus_one(x: int) -> int:  # light: fused into the driver
    return x + 1


def graph(driver: Any = None, *, fused: bool = True) -> sg.Graph:
    with sg.InputNode() as inp:
        out = double.bind(inp)
        if fused:
            out = plus_one.bind(out)
    return sg.Graph(out, name="scaled", driver=driver)


def test_user_options_win_over_the_driver_defaults() -> None:
    plan = sg.compile(graph({"num_replicas": 3, "max_ongoing_requests": 50,
                             "ray_actor_options": {"num_cpus": 0.5}}))
    options = plan.driver.options
    assert options["num_replicas"] == 3
    assert options["max_ongoing_requests"] == 50
    assert options["max_queued_requests"] == DRIVER_MAX_QUEUED_REQUESTS  # default kept
    assert options["ray_actor_options"] == {"num_cpus": 0.5}
    assert plan.driver.resources.replicas == ReplicaRange(start=3, min=3, max=3)
    assert plan.driver.resources.cpus == 0.5


def test_without_driver_options_the_driver_is_one_replica() -> None:
    plan = sg.compile(graph())
    assert "num_replicas" not in plan.driver.options
    assert plan.driver.resources.replicas == ReplicaRange()
    assert plan.driver.resources.cpus == 0


def test_an_autoscaled_driver_gets_serves_auto_defaults() -> None:
    plan = sg.compile(graph({"num_replicas": "auto", "autoscaling_config": {"max_replicas": 4}}))
    assert plan.driver.resources.replicas == ReplicaRange(start=1, min=1, max=4,
                                                          autoscaling=True)
    assert "scaled_driver        driver   autoscaling 1..4, 1 at start, 0 CPU" in explain(plan)
    driver = app_config(plan, "pkg.mod:graph")["deployments"][-1]
    assert driver["name"] == "scaled_driver"
    assert driver["num_replicas"] == "auto"
    assert driver["autoscaling_config"] == {"max_replicas": 4, "min_replicas": 1}


def test_every_output_shows_the_drivers_replicas() -> None:
    plan = sg.compile(graph({"num_replicas": 2, "ray_actor_options": {"num_cpus": 1}}))
    assert "scaled_driver        driver   2 replicas, 1 CPU" in explain(plan)
    assert app_config(plan, "pkg.mod:graph")["deployments"][-1]["num_replicas"] == 2
    assert "scaled_driver · 2 replicas · 1 CPU" in to_dot(plan)
    assert resources_needed(plan) == {"CPU": 3.0, "GPU": 0.0}  # double 1 + driver 2 x 1
    with pytest.raises(DeployError, match=r"needs 3 CPU .*scaled_driver 2 x 1"):
        check_fits(plan, {"CPU": 2.0})
    workers = rayservice(plan, "pkg.mod:graph")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [(w["replicas"], w["maxReplicas"]) for w in workers] == [(1, 1)]


def test_an_unfused_plan_draws_the_drivers_replicas_on_its_input() -> None:
    assert "input · scaled_driver · 2 replicas" in to_dot(
        sg.compile(graph({"num_replicas": 2}, fused=False)))


def test_the_local_executor_accepts_and_ignores_them() -> None:
    assert sg.run_local(graph({"num_replicas": 2}), 3) == 7


@pytest.mark.parametrize(("driver", "message"), [
    ({"num_replica": 2}, "unknown option 'num_replica'\n  hint: did you mean 'num_replicas'?"),
    ({"num_replicas": 0}, "option num_replicas=0: num_replicas must be at least 1, got 0"),
    ({"num_replicas": 2, "autoscaling_config": {"max_replicas": 3}},
     "num_replicas and autoscaling_config together"),
    ({"name": "mine"}, "option 'name' does not apply to the driver"),
    ({"timeout_s": 3}, "option 'timeout_s' does not apply to the driver"),
    ([("num_replicas", 2)], "driver= needs a dict of Serve options, got list"),
])
def test_bad_driver_options_name_the_driver_and_the_graphs_line(driver: Any,
                                                                 message: str) -> None:
    with pytest.raises(OptionsError) as caught:
        graph(driver)
    text = str(caught.value)
    assert text.startswith("[validate] stage 'scaled_driver' (")
    assert "test_driver_options.py:" in text and "sg.Graph(out, name=\"scaled\"" in text
    assert message in text

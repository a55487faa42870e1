"""A split's weights live in the driver's user_config: a new `serve deploy` config changes
them on the running application, and no replica (the driver's or a variant's) restarts."""

from __future__ import annotations

import collections
from typing import Any

import pytest
from ray import serve
from ray.serve.schema import ServeDeploySchema

import servegraph as sg
from servegraph.executors.ray import ray_private
from tests.reliability_stages import until

pytestmark = pytest.mark.ray

USERS = [f"user{index}" for index in range(200)]


def _answers(driver: Any) -> list[dict[str, Any]]:
    return [driver.remote({"user": user}).result() for user in USERS]


Processes = set[tuple[str, int]]


def _summary(answers: list[dict[str, Any]]) -> tuple[collections.Counter[str], Processes]:
    shares = collections.Counter(answer["answer"]["variant"] for answer in answers)
    processes = {(a["answer"]["variant"], a["answer"]["pid"]) for a in answers} | {
        ("driver", answer["driver"]) for answer in answers}
    return shares, processes


def test_new_split_weights_reach_the_running_driver_without_a_restart(ray_serve: int) -> None:
    client = ray_private.read("ray.serve.context", "_get_global_client")()
    config = sg.compile(__import__("tests.branch_stages", fromlist=["WEIGHTED"]).WEIGHTED
                        ).to_serve_config("tests.branch_stages:WEIGHTED")
    app = config["applications"][0] | {"name": "weighted-config",
                                       "route_prefix": "/weighted-config"}
    [driver_config] = [d for d in app["deployments"] if d["name"] == "weighted_driver"]
    assert driver_config["user_config"] == {"splits": {"ab": {"VariantOne": 50.0,
                                                              "VariantTwo": 50.0}}}
    try:
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}),
                           _blocking=True)
        driver = serve.get_app_handle("weighted-config").options(method_name="run")
        shares, before = _summary(_answers(driver))
        assert 70 <= shares["one"] <= 130, shares  # 50/50 by a hash of 200 keys
        driver_config["user_config"] = {"splits": {"ab": {"VariantOne": 1,
                                                          "VariantTwo": 99}}}
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}),
                           _blocking=True)
        answers = until(lambda: _answers(driver),
                        lambda answers: _summary(answers)[0]["two"] >= 190, "the new weights")
        after = _summary(answers)[1]
        assert after <= before  # the same driver and variant processes: nothing restarted
    finally:
        serve.delete("weighted-config", _blocking=False)  # its name is used once

"""Serve's replica hooks through servegraph's generated replicas: a new `user_config` reaches
the running replica when a `serve deploy` config changes it (no restart), and through an
`sg.serve` redeploy; a stage whose `check_health` raises is replaced while serving goes on.
In-process checks: tests/executors/test_hooks.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from ray import serve
from ray.serve.schema import ServeDeploySchema

import servegraph as sg
from servegraph.executors.ray import ray_private
from tests import hook_stages as hs
from tests.reliability_stages import until

pytestmark = pytest.mark.ray


def test_a_new_user_config_in_a_serve_deploy_config_reaches_the_running_replica(
        ray_serve: int) -> None:
    # what `serve deploy` asks of the controller, without the dashboard's REST hop
    client = ray_private.read("ray.serve.context", "_get_global_client")()
    app = sg.compile(hs.GREETING).to_serve_config("tests.hook_stages:GREETING")[
        "applications"][0] | {"name": "greeting-config", "route_prefix": "/greeting-config"}
    try:
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}),
                           _blocking=True)
        driver = serve.get_app_handle("greeting-config").options(method_name="run")
        first = driver.remote({"name": "ann"}).result()
        assert (first["text"], first["reconfigured"]) == ("hello ann!", 1)
        app["deployments"][0]["user_config"] = {"greeting": "hi"}
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}),
                           _blocking=True)
        second = until(lambda: driver.remote({"name": "ann"}).result(),
                       lambda answer: answer["text"] != "hello ann!", "the new user_config")
        assert second == {"text": "hi ann!", "replica": first["replica"], "reconfigured": 2}
    finally:
        serve.delete("greeting-config", _blocking=False)  # its name is used once


def test_a_redeploy_with_a_new_user_config_serves_it(deploy: Callable[..., Any]) -> None:
    handle = deploy(hs.greeting(), name="greeting")
    first = handle.call({"name": "ann"})
    assert first["text"] == "hello ann!"  # both hooks ran after __init__, sync and async
    assert first["reconfigured"] == 1
    changed = hs.Greeter.options(user_config={"greeting": "hi"})
    again = sg.serve(hs.greeting(changed), name="greeting")  # same app: a redeploy
    assert again.call({"name": "ann"})["text"] == "hi ann!"


def test_an_unhealthy_replica_is_replaced_and_serving_goes_on(
        deploy: Callable[..., Any]) -> None:
    handle = deploy(hs.fragile(), name="fragile")
    before = handle.call({"text": "a", "breaks": False})
    assert before["text"] == "A"
    handle.call({"text": "b", "breaks": True})  # its check_health raises from now on
    after = until(lambda: handle.call({"text": "c", "breaks": False}),
                  lambda answer: answer["replica"] != before["replica"],
                  "a new replica in place of the unhealthy one")
    assert after["text"] == "C"

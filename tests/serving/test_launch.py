"""Starting Ray for `sg.serve` without starting one: the embedded Ray's settings (its logical
GPUs from the plan's cluster spec, servegraph's switches), the warning for a Ray servegraph did
not start, and the hint when the Ray has too few GPUs. `ray.init` is recorded, never called."""

from __future__ import annotations

import os
import warnings
from typing import Any

import pytest

import servegraph as sg
from servegraph.errors import DeployError
from servegraph.serving import launch
from servegraph.serving.env import EMBEDDED_ENV, PROXY_ENV, SERVE_ENV
from tests import cli_graphs

CLUSTER = sg.ClusterSpec(gpus=2, gpu_memory="16GiB")
SWITCHES = {**SERVE_ENV, **PROXY_ENV}


@pytest.fixture
def ray_init(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """No Ray in this process and none at RAY_ADDRESS; `ray.init`'s calls recorded. The
    switches are unset (monkeypatch restores them after the test)."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(launch.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(launch.ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name in EMBEDDED_ENV:
        monkeypatch.delenv(name, raising=False)
    return calls


def test_the_embedded_ray_has_the_plans_gpus_and_servegraphs_switches(
        ray_init: list[dict[str, Any]]) -> None:
    """`servegraph run --gpus 2x16GiB` / `sg.serve(graph, cluster=...)` on a machine without a
    GPU: Ray gets the cluster's GPUs as logical ones, and starts with the switches."""
    plan = sg.compile(cli_graphs.lengths, cluster=CLUSTER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        launch.ensure_ray(plan)
    assert [(call["address"], call["num_gpus"]) for call in ray_init] == [("local", 2)]
    assert ray_init[0]["num_cpus"] >= launch.EMBEDDED_MIN_CPUS
    assert {name: os.environ.get(name) for name in EMBEDDED_ENV} == EMBEDDED_ENV
    launch.check_fits(plan, {"CPU": 16.0, "GPU": 2.0})  # what that Ray reports


def test_without_a_cluster_spec_ray_counts_the_machines_own_gpus(
        ray_init: list[dict[str, Any]]) -> None:
    launch.ensure_ray(sg.compile(cli_graphs.good))
    assert ray_init[0]["num_gpus"] is None


@pytest.mark.parametrize("where", ["this process", "RAY_ADDRESS"])
def test_a_ray_servegraph_did_not_start_warns_what_it_runs_without(
        ray_init: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The user's own `ray.init(num_gpus=2)` before `sg.serve`, or a cluster at RAY_ADDRESS,
    started without servegraph's switches: used as it is, with a warning naming each loss."""
    address = "ray://127.0.0.1:10001"  # a client address: connecting probes nothing first
    if where == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", address)
        which = f"is the cluster at RAY_ADDRESS={address}"
    else:
        monkeypatch.setattr(launch.ray, "is_initialized", lambda: True)
        which = "was running already"
    plan = sg.compile(cli_graphs.lengths, cluster=CLUSTER)
    with pytest.warns(RuntimeWarning) as caught:
        launch.ensure_ray(plan)
    assert len(caught) == 1
    assert str(caught[0].message) == (
        f"servegraph serves 'lengths' on a Ray that {which}, started without servegraph's "
        "switches in the environment, so it runs without Serve's pack scheduling, which the "
        "plan's GPU layout assumes (replicas may land on other GPUs than planned, or stay "
        "pending) (RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY); the proxy middleware that answers "
        "a request whose driver replica died with a JSON 502 naming it "
        "(RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH). Ray reads them only when it starts: let "
        "servegraph start Ray (no ray.init of your own; give sg.serve cluster=... or the CLI "
        "--gpus for GPUs), or set them before ray.init / `ray start`: "
        "RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY=1 "
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=servegraph.web.proxy:middlewares")
    assert [call["address"] for call in ray_init] == ([address] if where == "RAY_ADDRESS"
                                                      else [])

    for name, value in SWITCHES.items():  # set before that Ray started: nothing lost
        monkeypatch.setenv(name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        launch.ensure_ray(plan)


def test_too_few_gpus_names_the_cli_flag_and_the_python_way() -> None:
    plan = sg.compile(cli_graphs.lengths, cluster=CLUSTER)
    with pytest.raises(DeployError) as caught:
        launch.check_fits(plan, {"CPU": 16.0})  # a Ray started before, without GPUs
    assert str(caught.value) == (
        "pipeline 'lengths' needs 2 GPU for its replicas (WordLengths 2 x 1), but the Ray "
        "cluster has 0; lower num_replicas or num_gpus, or serve it for a cluster spec: "
        "servegraph's embedded Ray gets its GPUs (logical ones: none need exist) (CLI: "
        "servegraph run MODULE:ATTR --gpus 2x16GiB; Python: sg.serve(graph, "
        "cluster=sg.ClusterSpec(gpus=2, gpu_memory='16GiB'))). A Ray that was running already "
        "(your ray.init, or RAY_ADDRESS) keeps the GPUs it started with: start it with "
        "ray.init(num_gpus=2) or ray start --num-gpus=2, servegraph's switches "
        "(servegraph.serving.env) set first")

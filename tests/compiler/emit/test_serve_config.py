"""`plan.to_serve_config()`: a `serve deploy` config that Ray's own schema accepts, listing every
deployment with its compiled options; `sg.serve(cluster=...)` packs a graph for a cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from ray.serve.schema import ServeDeploySchema

import servegraph as sg
from servegraph.errors import DeployError
from servegraph.serving import launch
from tests import cli_graphs, gpu_graphs
from tests.stages import diamond

CLUSTER = sg.ClusterSpec(gpus=2, gpu_memory="80GiB")


@sg.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 4,
                                   "target_ongoing_requests": 2},
               ray_actor_options={"num_cpus": 0.5, "num_gpus": 0.5}, health_check_period_s=5,
               user_config={"threshold": 0.3}, max_queued_requests=50,
               graceful_shutdown_timeout_s=3)
class Ranker:
    def reconfigure(self, config: dict[str, float]) -> None:
        self.threshold = config["threshold"]

    def rank(self, query: str) -> str:
        return query


@sg.deployment(max_ongoing_requests=64)
class Upper:
    @sg.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def upper(self, texts: list[str]) -> list[str]:
        return [text.upper() for text in texts]


def ranked() -> sg.Graph:
    with sg.InputNode() as inp:
        out = Ranker.bind().rank.bind(Upper.bind().upper.bind(inp))
    return sg.Graph(out, name="ranked")


def test_gpu_stage_config_validates_and_carries_the_derived_fraction_and_the_cluster() -> None:
    plan = sg.compile(cli_graphs.lengths, cluster=CLUSTER)
    config = plan.to_serve_config()  # the graph's module path is found by itself
    assert config == plan.to_serve_config(graph="tests.cli_graphs:lengths")
    assert ray_reads(config) == config
    assert config == {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [{
            "name": "lengths",
            "route_prefix": "/lengths",
            "import_path": "servegraph.serving.app:app_builder",
            "args": {"graph": "tests.cli_graphs:lengths", "cluster": {"nodes": [
                {"name": "node0", "gpus": 2, "gpu_memory": 80 * 2**30, "cpus": None,
                 "labels": {}}]}},
            "deployments": [
                {"name": "WordLengths", "num_replicas": 2, "ray_actor_options": {"num_gpus": 0.2}},
                {"name": "lengths_driver", "max_ongoing_requests": 1000,
                 "max_queued_requests": 1000,
                 "backpressure_config": {"status_code": 503, "retry_after_s": 1},
                 "health_check_period_s": 1.0, "ray_actor_options": {"num_cpus": 0}},
            ],
        }],
    }
    assert sg.ClusterSpec.model_validate(config["applications"][0]["args"]["cluster"]) == CLUSTER


def ray_reads(config: dict[str, Any]) -> dict[str, Any]:
    """The config as Ray's own `ServeDeploySchema` validates and reads it back."""
    return ServeDeploySchema.model_validate(config).model_dump(mode="json", exclude_unset=True)


def test_every_serve_option_reaches_the_config_and_validates() -> None:
    plan = sg.compile(ranked(), cluster=sg.ClusterSpec(gpus=1, gpu_memory="24GiB", cpus=4))
    config = plan.to_serve_config(graph="tests.compiler.emit.test_serve_config:ranked",
                                  host="127.0.0.1", port=8123,
                                  runtime_env={"env_vars": {"MODE": "test"}})
    assert ray_reads(config) == config
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    application = config["applications"][0]
    assert {key: application[key] for key in ("name", "route_prefix", "import_path", "args",
                                              "runtime_env")} == {
        "name": "ranked", "route_prefix": "/ranked",
        "import_path": "servegraph.serving.app:app_builder",
        "args": {"graph": "tests.compiler.emit.test_serve_config:ranked", "cluster": {"nodes": [
            {"name": "node0", "gpus": 1, "gpu_memory": 24 * 2**30, "cpus": 4.0, "labels": {}}]}},
        "runtime_env": {"env_vars": {"MODE": "test"}}}
    assert application["deployments"] == [
        {"name": "Upper", "max_ongoing_requests": 64},
        {"name": "Ranker", "max_queued_requests": 50, "user_config": {"threshold": 0.3},
         "autoscaling_config": {"min_replicas": 1, "max_replicas": 4,
                                "target_ongoing_requests": 2.0},
         "graceful_shutdown_timeout_s": 3.0, "health_check_period_s": 5.0,
         "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.5}},
        {"name": "ranked_driver", "max_ongoing_requests": 1000, "max_queued_requests": 1000,
         "backpressure_config": {"status_code": 503, "retry_after_s": 1},
         "health_check_period_s": 1.0, "ray_actor_options": {"num_cpus": 0}},
    ]


def test_an_auto_stage_shows_the_replica_range_serve_uses() -> None:
    """num_replicas="auto" passes through, and the autoscaling_config shows the range Serve
    will run: the user's target_ongoing_requests laid over AutoscalingConfig.default() (max
    100), not the 1..1 of a plain autoscaling_config."""
    plan = sg.compile(gpu_graphs.auto, cluster=CLUSTER)
    config = plan.to_serve_config(graph="tests.gpu_graphs:auto")
    assert ray_reads(config) == config
    assert config["applications"][0]["deployments"][:2] == [
        {"name": "tokenize", "num_replicas": 2},
        {"name": "AutoEmbedder", "num_replicas": "auto",
         "autoscaling_config": {"target_ongoing_requests": 2.0, "min_replicas": 1,
                                "max_replicas": 100},
         "ray_actor_options": {"num_gpus": 0.25}},
    ]


def test_the_launcher_counts_replicas_at_start_and_at_most() -> None:
    """`serve.run` waits for the replicas each stage starts with (tokenize 2, AutoEmbedder 1,
    the driver's none of its own CPU); an embedded Ray is sized for all 100 AutoEmbedders."""
    plan = sg.compile(gpu_graphs.auto, cluster=CLUSTER)
    assert launch.resources_needed(plan) == {"CPU": 3.0, "GPU": 0.25}
    assert launch.resources_needed(plan, at_most=True) == {"CPU": 102.0, "GPU": 25.0}
    assert launch.cpus_needed(plan) == 102
    launch.check_fits(plan, {"CPU": 3.0, "GPU": 0.25})
    with pytest.raises(DeployError) as caught:
        launch.check_fits(plan, {"CPU": 2.0, "GPU": 1.0})
    assert str(caught.value) == (
        "pipeline 'auto' needs 3 CPU for its replicas (tokenize 2 x 1, AutoEmbedder 1 x 1), but "
        "the Ray cluster has 2; lower num_replicas or num_cpus, or give Ray more "
        "(ray.init(num_cpus=...))")


def test_serve_refuses_a_plan_with_another_cluster() -> None:
    plan = sg.compile(diamond())
    with pytest.raises(DeployError) as caught:
        sg.serve(plan, cluster=CLUSTER)
    assert str(caught.value) == (
        "sg.serve got the plan 'diamond', compiled for no cluster spec, with cluster=node0: "
        "2 x 80GiB GPU; pass the graph to compile it for that cluster, or "
        "sg.compile(graph, cluster=...) and serve that plan without cluster=")


@pytest.mark.ray
def test_serve_compiles_a_graph_for_the_cluster(deploy: Callable[..., Any]) -> None:
    """Without a cluster spec `lengths` does not compile (its stage gives gpu_memory only)."""
    handle = deploy(cli_graphs.lengths, cluster=CLUSTER, name="lengths-on-cluster",
                    route_prefix="/lengths-on-cluster")
    assert handle.call({"text": "a bb ccc"}) == 6
    served = httpx.get(f"{handle.url}/-/plan", timeout=60).json()
    assert served["cluster"] == CLUSTER.model_dump(mode="json")
    assert [d["name"] for d in served["deployments"]] == ["WordLengths", "total"]
    assert served["deployments"][0]["options"]["ray_actor_options"]["num_gpus"] == 0.2

"""Serve's replica hooks on both executors: `reconfigure` receives `user_config` after
`__init__` (sync or async), `check_health` is forwarded by the replica. On real Serve (a
redeploy reaching running replicas, an unhealthy replica replaced): tests/serving/test_hooks.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import servegraph as sg
from servegraph.dag import health_check
from servegraph.executors.program import Program
from servegraph.executors.ray.replica import StageReplica
from tests import cli_graphs
from tests import hook_stages as hs


def node_id(plan: sg.CompiledPipeline, stage: str) -> str:
    return next(step.node.id for step in Program(plan).steps if step.node.stage == stage)


def test_run_local_reconfigures_each_stage_with_its_user_config() -> None:
    assert sg.run_local(hs.greeting(), {"name": "ann"}) == {
        "text": "hello ann!", "replica": "local", "reconfigured": 1}
    changed = hs.Greeter.options(user_config={"greeting": "hi"})
    assert sg.run_local(hs.greeting(changed), {"name": "bo"})["text"] == "hi bo!"


def test_an_async_reconfigure_runs_where_a_loop_is_running_too() -> None:
    async def inside_a_loop() -> Any:
        executor = sg.LocalExecutor(hs.greeting())  # built in a running loop
        return await executor.acall({"name": "cy"})

    assert asyncio.run(inside_a_loop())["text"] == "hello cy!"


def test_an_override_without_reconfigure_is_left_as_it_is() -> None:
    class FakeSuffixer:
        def add(self, greeted: dict[str, Any]) -> dict[str, Any]:
            return {**greeted, "text": greeted["text"] + "?"}

    result = sg.run_local(hs.greeting(), {"name": "di"}, overrides={hs.Suffixer: FakeSuffixer})
    assert result["text"] == "hello di?"


def test_the_replica_forwards_reconfigure_sync_or_async() -> None:
    plan = sg.compile(hs.greeting())
    greeter = StageReplica(plan, "Greeter")
    asyncio.run(greeter.reconfigure({"greeting": "hey"}))  # as Serve calls it, after __init__
    assert asyncio.run(greeter.greet(node_id(plan, "Greeter"), (), "ed")) == {
        "text": "hey ed", "replica": "local", "reconfigured": 1}
    suffixer = StageReplica(plan, "Suffixer")
    asyncio.run(suffixer.reconfigure({"suffix": "?!"}))
    assert asyncio.run(suffixer.add(node_id(plan, "Suffixer"), (), {"text": "a"})) == {
        "text": "a?!"}


def test_the_replica_forwards_check_health_only_where_the_stage_has_one() -> None:
    plan = sg.compile(hs.fragile())
    replica = StageReplica(plan, "Fragile")
    asyncio.run(replica.check_health())
    asyncio.run(replica.answer(node_id(plan, "Fragile"), (), "abc", True))
    with pytest.raises(RuntimeError, match="asked to break"):
        asyncio.run(replica.check_health())
    assert not hasattr(StageReplica(sg.compile(hs.greeting()), "Greeter"), "check_health")
    # a stage method called `check_health` that takes arguments is a node's, not Serve's hook
    assert not hasattr(StageReplica(sg.compile(cli_graphs.loud), "Shouter"), "check_health")


def test_a_stage_with_a_health_check_is_never_fused_into_the_driver() -> None:
    plan = sg.compile(hs.fragile(hs.Fragile.options(fuse=True)))
    assert plan.fused() == []
    assert plan.stage("Fragile").fusion == "needs a process of its own (check_health)"


def test_the_health_hook_is_a_check_health_that_takes_no_arguments() -> None:
    class Static:
        @staticmethod
        def check_health() -> None:
            return None

    assert health_check(hs.Fragile) is hs.Fragile.check_health
    assert health_check(Static) is Static.check_health
    assert health_check(cli_graphs.Shouter) is None  # check_health(text): a node's method
    assert health_check(cli_graphs.Shouter()) is None
    assert health_check(hs.Greeter) is None
    assert health_check(hs.replica_id) is None

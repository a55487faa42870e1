"""`sg.multiplexed` on Ray Serve: the driver names each call's model with
`multiplexed_model_id`, the replica serves it with Serve's own `serve.multiplexed` loader (its
LRU, its reports to the router), the stage reads the id Serve routed by, a fourth tenant evicts
the least recently used model, and each tenant's answer comes from its own head. In-process
checks: tests/executors/test_multiplexed.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import servegraph as sg
from servegraph.pipelines import tenants
from tests import multiplex_stages as ms

pytestmark = pytest.mark.ray


def test_model_ids_reach_the_replica_and_a_fourth_tenant_evicts(
        deploy: Callable[..., Any]) -> None:
    handle = deploy(ms.tenant_graph(), name="multiplexed", route_prefix="/multiplexed")
    answers = [handle.call({"tenant": t, "text": f"{t} hi"}) for t in ["a", "b", "c", "a"]]
    assert [(a["model_id"], a["answer"], a["serve_loader"]) for a in answers] == [
        ("a", "a:a hi", True), ("b", "b:b hi", True), ("c", "c:c hi", True),
        ("a", "a:a hi", True)]
    assert answers[-1]["loads"] == ["a", "b", "c"]
    assert handle.call({"tenant": "d", "text": "x"})["loads"] == ["a", "b", "c", "d"]  # b out
    assert handle.call({"tenant": "a", "text": "x"})["loads"] == ["a", "b", "c", "d"]
    assert handle.call({"tenant": "b", "text": "x"})["loads"] == ["a", "b", "c", "d", "b"]


def test_a_model_id_from_a_stage_on_its_own_deployment(deploy: Callable[..., Any]) -> None:
    plan = sg.compile(ms.routed_graph(), fuse=False)  # the id is a DeploymentResponse
    handle = deploy(plan, name="routed", route_prefix="/routed")
    assert [handle.call({"text": f"{t} hi"}) for t in ["x", "y", "x"]] == [
        "X:X HI", "Y:Y HI", "X:X HI"]
    fused = deploy(ms.routed_graph(), name="routed-fused", route_prefix="/routed-fused")
    assert fused.call({"text": "z hi"}) == "Z:Z HI"


def test_each_tenants_answer_comes_from_its_own_head(deploy: Callable[..., Any]) -> None:
    handle = deploy(tenants.build_graph(), name="tenants", route_prefix="/tenants")
    raw = (tenants._digits()[0][3] * 16).tolist()
    features = tenants.encode_array(np.asarray(raw)[None, :] / 16.0)[0].tolist()
    order = ["even", "large", "round", "even", "prime", "even", "large"]
    answers = [handle.call({"tenant": t, "pixels": raw}) for t in order]
    assert [a["tenant"] for a in answers] == order
    for answer in answers:
        expected = tenants.TenantHead(answer["tenant"]).probability(features)
        assert answer["probability"] == round(expected, 6)
    assert [a["loads"] for a in answers] == [1, 2, 3, 3, 4, 4, 5]

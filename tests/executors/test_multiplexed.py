"""`sg.multiplexed` in-process: the per-replica LRU (Serve's semantics), the model id each call
runs with, evictions under a fourth tenant, the model id from a stage's output, and the real
example (`pipelines.tenants`): each tenant's answer comes from its own head."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import servegraph as sg
from servegraph.dag.deployment import models_of, multiplex_spec
from servegraph.pipelines import tenants
from tests import multiplex_stages as ms


def _ask(executor: sg.LocalExecutor, tenant: str) -> dict:
    return executor.call({"tenant": tenant, "text": f"{tenant} hi"})


def test_each_call_runs_with_its_model_id_and_loads_it_once() -> None:
    executor = sg.LocalExecutor(ms.tenant_graph())
    answers = [_ask(executor, tenant) for tenant in ["a", "b", "a", "c", "b"]]
    assert [(a["model_id"], a["answer"]) for a in answers] == [
        ("a", "a:a hi"), ("b", "b:b hi"), ("a", "a:a hi"), ("c", "c:c hi"), ("b", "b:b hi")]
    assert answers[-1]["loads"] == ["a", "b", "c"]  # 3 fit: no tenant loaded twice


def test_a_fourth_tenant_evicts_the_least_recently_used() -> None:
    executor = sg.LocalExecutor(ms.tenant_graph())
    for tenant in ["a", "b", "c", "a"]:  # a used last: b is now the least recently used
        _ask(executor, tenant)
    assert _ask(executor, "d")["loads"] == ["a", "b", "c", "d"]  # d evicts b
    assert _ask(executor, "a")["loads"] == ["a", "b", "c", "d"]  # a still held
    assert _ask(executor, "b")["loads"] == ["a", "b", "c", "d", "b"]  # b again: evicts c
    assert _ask(executor, "c")["loads"] == ["a", "b", "c", "d", "b", "c"]  # evicts d


def test_the_cache_counts_evictions_and_keeps_the_limit() -> None:
    stage = ms.Heads()
    spec = multiplex_spec(stage)
    assert spec is not None and spec.max_models_per_replica == 3

    async def load_all() -> None:
        for tenant in ["a", "b", "c", "d", "a"]:
            assert (await stage.load(tenant)).tenant == tenant

    asyncio.run(load_all())
    cache = models_of(stage, spec)
    assert (list(cache.models), cache.evicted, stage.loads) == (
        ["c", "d", "a"], 2, ["a", "b", "c", "d", "a"])


def test_concurrent_calls_for_one_model_load_it_once() -> None:
    stage = ms.Heads()

    async def together() -> list[str]:
        heads = await asyncio.gather(*(stage.load("a") for _ in range(5)))
        return [head.tenant for head in heads]

    assert asyncio.run(together()) == ["a"] * 5
    assert stage.loads == ["a"]


def test_the_model_id_from_a_stages_output() -> None:
    executor = sg.LocalExecutor(ms.routed_graph())
    assert [executor.call({"text": f"{t} hi"}) for t in ["x", "y", "x"]] == [
        "X:X HI", "Y:Y HI", "X:X HI"]


def test_a_model_id_that_is_not_a_string_fails_naming_the_stage() -> None:
    with pytest.raises(sg.StageError) as caught:
        sg.run_local(ms.tenant_graph(), {"tenant": 7, "text": "hi"})
    assert caught.value.stage == "Heads"
    assert "the model id is 7 (int): a model id is a non-empty string" in str(caught.value)


def test_outside_a_call_there_is_no_model_id() -> None:
    assert sg.multiplexed_model_id() == ""


def test_each_tenants_answer_comes_from_its_own_head() -> None:
    executor = sg.LocalExecutor(tenants.build_graph())
    pixels, labels = tenants._digits()
    samples = range(0, 200, 7)
    for tenant, digits in tenants.TENANTS.items():
        head = tenants.TenantHead(tenant)
        right = 0
        for index in samples:
            raw = (pixels[index] * 16).tolist()
            answer = executor.call({"tenant": tenant, "pixels": raw})
            features = tenants.encode_array(np.asarray(raw)[None, :] / 16.0)[0]
            assert answer["tenant"] == tenant
            assert answer["probability"] == round(head.probability(features.tolist()), 6)
            right += answer["yes"] == (labels[index] in digits)
        assert right >= 0.85 * len(samples), (tenant, right)


def test_the_tenants_example_evicts_under_a_fourth_tenant() -> None:
    executor = sg.LocalExecutor(tenants.build_graph())
    raw = (tenants._digits()[0][0] * 16).tolist()
    loads = [executor.call({"tenant": t, "pixels": raw})["loads"]
             for t in ["even", "large", "round", "even", "prime", "even", "large"]]
    # prime evicts large (least recently used); large then evicts round
    assert loads == [1, 2, 3, 3, 4, 4, 5]

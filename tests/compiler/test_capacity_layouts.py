"""The capacity pass weighs every fused set of the heavy stages the driver can run, not only
all or none: a target the split layout misses is planned with the fewest stages fused that
reach it, the others keeping deployments (and scaling) of their own. Hand calculations with
Serve's costs pinned (see `compiler.capacity`)."""

from __future__ import annotations

import pytest

import servegraph as sg
from servegraph.compiler.passes.capacity_layout import fused_sets
from servegraph.compiler.profile import BatchTiming, Machine, StageProfile, ThreadTiming

pytestmark = pytest.mark.usefixtures("serve_costs")  # conftest: Serve's costs pinned


@sg.deployment
class Mapper:
    def part(self, x: int) -> int:
        return x + 1


@sg.deployment
class Heavy:
    def total(self, parts: list[int]) -> int:
        return sum(parts)


def mapped_then_heavy() -> sg.Graph:
    with sg.InputNode() as inp:
        parts = sg.map(Mapper.bind().part, inp)
        out = Heavy.bind().total.bind(parts)
    return sg.Graph(out, name="mapped")


def _stage(label: str, calls: int, ms: float, maps: tuple[int, int] = (0, 0)) -> StageProfile:
    stage, _, method = label.partition(".")
    return StageProfile(
        stage=stage, method=method, calls=calls, peak_memory_bytes=0, maps=maps[0],
        map_calls=maps[1],
        service_ms=[BatchTiming(batch_size=1, median_ms=ms, per_item_ms=ms, samples=5)],
        threads_ms=[ThreadTiming(threads=1, batch_size=1, median_ms=ms, samples=5)])


def mapped_profile() -> sg.Profile:
    """One payload of 8 items: Mapper.part 8 calls of 1 ms, Heavy.total one of 20 ms."""
    return sg.Profile(pipeline="mapped", machine=Machine(cpus=4, platform="t", python="3"),
                      payloads=1, budget_s=1.0,
                      stages=[_stage("Mapper.part", 8, 1.0, maps=(1, 8)),
                              _stage("Heavy.total", 1, 20.0)])


def test_a_target_is_planned_with_the_fewest_stages_fused_that_reach_it() -> None:
    """80 req/s on 4 CPUs at 80% busy. Split, a request is 8 + 20 ms of work and 2.2 + 2.5 x 9
    ms of Serve's: 4000 x 0.8 / 52.7 = 60.7 req/s. Heavy alone in the driver still leaves the
    8 map calls: 4000 x 0.8 / 50.2 = 63.7. Mapper in the driver leaves one call:
    4000 x 0.8 / 32.7 = 97.9, and fits: Heavy 2 replicas (50 req/s each, 40 at 80%), the
    driver 2 (0.7 x 4.7 + 8 = 11.3 ms a request, 70.9 req/s each at 80%): 4 CPUs."""
    plan = sg.compile(mapped_then_heavy(), cluster=sg.ClusterSpec(cpus=4),
                      profile=mapped_profile(), target=sg.Target(rps=80))
    assert [stage.name for stage in plan.fused()] == ["Mapper"]
    heavy = plan.stage("Heavy")
    assert heavy.fused_into is None and heavy.resources.replicas.start == 2
    assert plan.driver.resources.replicas.start == 2
    assert plan.capacity is not None and plan.capacity.layout == (
        "planned into the driver: 80 req/s is out of reach with Mapper as deployments of "
        "their own (each stage call a Serve call); Heavy stays a deployment of its own")
    # a target only both in the driver reach: 100 req/s needs 4000 x 0.8 / 30.2 = 106
    plan = sg.compile(mapped_then_heavy(), cluster=sg.ClusterSpec(cpus=4),
                      profile=mapped_profile(), target=sg.Target(rps=100))
    assert sorted(stage.name for stage in plan.fused()) == ["Heavy", "Mapper"]


def test_fused_sets_fewest_first_light_stages_always_in() -> None:
    assert fused_sets(frozenset({"b", "a", "light"}), frozenset({"light"})) == [
        frozenset({"a", "light"}), frozenset({"b", "light"}), frozenset({"a", "b", "light"})]
    assert fused_sets(frozenset({"light"}), frozenset({"light"})) == [frozenset({"light"})]
    assert fused_sets(frozenset(), frozenset()) == []
    many = frozenset(f"s{index}" for index in range(7))  # past the subsets' bound: all only
    assert fused_sets(many) == [many]

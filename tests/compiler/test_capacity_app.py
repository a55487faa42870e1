"""Capacity planning of an `sg.App`: each graph to its own target on what the cluster has left
once the other graphs have their stages; a stage two graphs share gets the replicas both
loads need, added; the one ingress the driver replicas both need. Synthetic profiles, hand
calculations (see `compiler.capacity` for the formulas)."""

from __future__ import annotations

import re

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

import servegraph as sg
from servegraph.compiler.profile import BatchTiming, Machine, StageProfile, ThreadTiming
from servegraph.errors import BindError

MACHINE = Machine(cpus=16, platform="test", python="3")


pytestmark = pytest.mark.usefixtures("serve_costs")  # conftest: Serve's costs pinned


@sg.deployment
class Shared:
    def __call__(self, x: int) -> int:
        return x + 1


@sg.deployment
class OnlyA:
    def __call__(self, x: int) -> int:
        return x * 2


def two_graph_app() -> sg.App:
    shared = Shared.bind()
    with sg.InputNode() as inp:
        a = sg.Graph(shared.__call__.bind(OnlyA.bind().__call__.bind(inp)), name="a")
    with sg.InputNode() as inp:
        b = sg.Graph(shared.__call__.bind(inp), name="b")
    return sg.App({"/a": a, "/b": b}, name="both")


def _stage(label: str, ms: float) -> StageProfile:
    stage, _, method = label.partition(".")
    return StageProfile(
        stage=stage, method=method, calls=4, peak_memory_bytes=0,
        service_ms=[BatchTiming(batch_size=1, median_ms=ms, per_item_ms=ms, samples=5)],
        threads_ms=[ThreadTiming(threads=1, batch_size=1, median_ms=ms, samples=5)])


def app_profiles() -> list[sg.Profile]:
    """OnlyA 20 ms a call (50 req/s a replica), Shared 10 ms (100 req/s), one call each a
    request."""
    return [sg.Profile(pipeline="a", machine=MACHINE, payloads=4, budget_s=1.0,
                       stages=[_stage("OnlyA.__call__", 20.0), _stage("Shared.__call__", 10.0)]),
            sg.Profile(pipeline="b", machine=MACHINE, payloads=4, budget_s=1.0,
                       stages=[_stage("Shared.__call__", 10.0)])]


TARGETS = {"a": sg.Target(rps=100), "b": sg.Target(rps=200)}


def test_each_graph_to_its_target_and_a_shared_stage_for_both() -> None:
    """At 80% busy: a's OnlyA ceil(100 / 40) = 3 replicas, a's Shared ceil(100 / 80) = 2,
    b's Shared ceil(200 / 80) = 3: the one Shared deployment runs 2 + 3 = 5. Each graph's
    driver work needs one replica (0.7 x (2.2 + 2.5 x hops) ms a request): the ingress 2."""
    plan = sg.compile(two_graph_app(), cluster=sg.ClusterSpec(cpus=16), profile=app_profiles(),
                      target=TARGETS)
    assert isinstance(plan, sg.CompiledApp)
    replicas = {stage.name: stage.resources.replicas.start for stage in plan.served()}
    assert replicas == {"OnlyA": 3, "Shared": 5}
    for graph in ("a", "b"):
        assert plan.plans[graph].stage("Shared").resources.replicas.start == 5
        assert "capacity" in plan.plans[graph].passes
    assert plan.driver.options["num_replicas"] == 2
    # each graph's predictions show its own share of the shared stage
    a, b = (plan.plans[name].capacity for name in ("a", "b"))
    assert a is not None and b is not None
    assert {row.stage: row.replicas for row in a.stages if row.stage != "a_driver"} == {
        "OnlyA": 3, "Shared": 2}
    assert {row.stage: row.replicas for row in b.stages if row.stage != "b_driver"} == {
        "Shared": 3}
    assert (a.target, b.target) == (TARGETS["a"], TARGETS["b"])
    text = plan.explain()
    assert "capacity (planned from a profile for 100 req/s on 16 CPUs):" in text
    assert "capacity (planned from a profile for 200 req/s on 11 CPUs):" in text
    config = plan.to_serve_config("servegraph.tests.whatever:app")
    ServeDeploySchema.model_validate(yaml.safe_load(yaml.safe_dump(config)))


def test_a_graph_planned_later_gets_what_the_earlier_ones_left() -> None:
    """On 8 CPUs, a takes 3 + 2 = 5; b is left 3, and 200 req/s of Shared's 10 ms and
    Serve's 4.7 ms a request need 200 x 14.7 / 800 = 3.7 CPUs at 80% busy."""
    with pytest.raises(sg.CapacityError) as caught:
        sg.compile(two_graph_app(), cluster=sg.ClusterSpec(cpus=8), profile=app_profiles(),
                   target=TARGETS)
    assert str(caught.value) == (
        "[capacity] stage 'Shared': graph 'b', on what the app's other graphs leave of the "
        "cluster (5 CPUs taken): 200 req/s needs 3.67 CPUs busy (10 ms of stage work and 4.7 "
        "ms of Serve's calls per request, at 80% busy) and the cluster has 3; the bottleneck "
        "is this stage's 10 ms per request\n"
        "  hint: give the cluster 1 more CPUs, or aim at 163 req/s, the most it serves")
    # a graph without a profile is compiled as declared
    plan = sg.compile(two_graph_app(), cluster=sg.ClusterSpec(cpus=8), profile=app_profiles()[:1],
                      target={"a": TARGETS["a"]})
    assert {stage.name: stage.resources.replicas.start for stage in plan.served()} == {
        "OnlyA": 3, "Shared": 2}
    assert plan.plans["b"].capacity is None and plan.plans["a"].capacity is not None


@pytest.mark.parametrize(("profile", "target", "message"), [
    ("profiles", None, "an sg.App is planned to a target per graph"),
    ("profiles", {"a": sg.Target(rps=1)}, "graph 'b' has a profile but no target"),
    ("a only", {"a": sg.Target(rps=1), "b": sg.Target(rps=1)},
     "graph 'b' has a target but no profile"),
    ("profiles", {"c": sg.Target(rps=1)}, "target= names graph 'c', which the app does not "
     "hold (its graphs: a, b)"),
    ("junk", None, "profile= for an sg.App needs profiles by graph name, got int"),
])
def test_planning_an_app_wrongly_is_a_bind_error(profile: str, target: object,
                                                 message: str) -> None:
    given = {"profiles": app_profiles(), "a only": app_profiles()[:1], "junk": 3}[profile]
    with pytest.raises(BindError, match=re.escape(message)) as caught:
        sg.compile(two_graph_app(), profile=given, target=target)  # type: ignore[arg-type]
    assert "test_capacity_app.py" in str(caught.value)

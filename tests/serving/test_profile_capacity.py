"""`sg.profile` for capacity planning: the threads sweep, profiles of the diamond and the
flagship round-tripping through JSON, and a plan compiled from each."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import pytest

import servegraph as sg
from servegraph.compiler.profile import REPLICA_CPUS_ENV
from tests.stages import batch_probe, diamond


@sg.deployment
class CountsCpus:
    """Notes the CPUs the profiler built it with, as a model helper reads them."""

    built: ClassVar[list[str | None]] = []

    def __init__(self) -> None:
        CountsCpus.built.append(os.environ.get(REPLICA_CPUS_ENV))

    def __call__(self, x: int) -> int:
        return x + 1


def test_the_threads_sweep_builds_a_stage_per_cpu_count() -> None:
    with sg.InputNode() as inp:
        out = CountsCpus.bind().__call__.bind(inp)
    CountsCpus.built.clear()
    prof = sg.profile(sg.Graph(out, name="counts"), [1, 2], budget_s=0.1)
    cpus = prof.machine.cpus
    # the local executor's instance while recording, then one per CPU count
    assert CountsCpus.built[1:] == [str(count) for count in range(1, cpus + 1)]
    assert REPLICA_CPUS_ENV not in os.environ
    stage = prof.stage("CountsCpus.__call__")
    assert [t.threads for t in stage.threads_ms] == list(range(1, cpus + 1))
    assert all(t.batch_size == 1 and t.median_ms > 0 for t in stage.threads_ms)


def test_a_diamond_profile_round_trips_and_plans() -> None:
    prof = sg.profile(diamond(), [{"x": 1}, {"x": 2}], budget_s=0.2)
    again = sg.Profile.model_validate_json(prof.model_dump_json())
    assert again == prof
    plan = sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=2), profile=again)
    assert plan.capacity is not None and plan.capacity.capacity_rps > 0
    assert "capacity" in plan.passes


def test_the_flagship_profile_round_trips_and_plans_the_encoder() -> None:
    """The ONNX MiniLM encoder: batches of 1..32 and 1..N threads; planned on a 2-CPU
    cluster, the encoder runs in the driver (17 Serve calls a request saved), whose replicas
    take every CPU, and the light ranker with it."""
    from servegraph.pipelines import search

    payloads = [{"query": query, "documents": search.SAMPLE_CORPUS[:8], "top_k": 2}
                for query in list(search.SAMPLE_QUERIES)[:2]]
    prof = sg.profile(search.onnx_graph, payloads, budget_s=2.0)
    encode = prof.stage("OnnxEncoder.encode")
    assert encode.calls == 18 and encode.service_ms[-1].batch_size == 32
    assert [t.threads for t in encode.threads_ms] == list(range(1, prof.machine.cpus + 1))
    again = sg.Profile.model_validate_json(prof.model_dump_json())
    assert again == prof
    plan = sg.compile(search.onnx_graph, cluster=sg.ClusterSpec(cpus=2), profile=again)
    driver = plan.driver.resources
    assert driver.replicas.start * driver.cpus == 2
    assert [stage.name for stage in plan.fused()] == ["OnnxEncoder", "Ranker"]
    assert plan.capacity is not None
    assert plan.capacity.layout.startswith("planned into the driver for throughput: "
                                           "OnnxEncoder, Ranker there serve ")


def test_model_helpers_take_their_threads_from_the_planned_cpus(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the profiler's sweep sets is what ONNX Runtime and torch stages read (outside
    Ray: inside, Ray's assigned CPUs)."""
    from servegraph.pipelines import models

    monkeypatch.delenv(REPLICA_CPUS_ENV, raising=False)
    assert models.replica_cpus() is None
    monkeypatch.setenv(REPLICA_CPUS_ENV, "2")
    assert models.replica_cpus() == 2.0
    assert models.thread_count(None, models.replica_cpus()) == 2


@pytest.mark.ray
@pytest.mark.parametrize("fuse", [True, False])
def test_serve_batches_at_the_planned_batch_size(deploy: Any, fuse: bool) -> None:
    """A profile where batches of 2 are cheapest per item (`BatchProbe` declares 4): in the
    driver (the fused layout) and on a replica of its own (`fuse=False`), Serve batches at 2.
    One CPU, so one replica takes all four calls (two would split them by routing)."""
    from tests.compiler.test_capacity import PROBE_PAYLOAD, probe_profile

    plan = sg.compile(batch_probe(), cluster=sg.ClusterSpec(cpus=1),
                      profile=probe_profile({1: 2.0, 2: 2.6, 4: 5.6}), fuse=fuse)
    assert [s.name for s in plan.fused()] == (["BatchProbe"] if fuse else [])
    served = plan.driver if fuse else plan.stage("BatchProbe")
    assert served.resources.replicas.start == 1
    handle = deploy(plan, name=f"sgtest_planned_batch_{fuse}".lower(),
                    route_prefix=f"/planned-batch-{fuse}".lower())
    assert handle.call(PROBE_PAYLOAD) == {"one": 2, "sizes": [2, 2, 2]}

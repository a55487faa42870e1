"""`sg.profile`: the stages and methods measured, batch sizes, a JSON round trip, the budget."""

from __future__ import annotations

import asyncio

import pytest

import servegraph as sg
from servegraph.serving.profile import Profile, batch_sizes, recorded_calls
from tests import profile_stages
from tests.batch_stages import halves
from tests.stages import diamond, scoring

SCORING = [{"query": "hello", "words": ["a", "bb", "ccc"], "factor": 2},
           {"query": "hi", "words": [], "factor": 1}]


def _timings(prof: Profile) -> dict[str, list[int]]:
    return {stage.label: [t.batch_size for t in stage.service_ms] for stage in prof.stages}


def test_diamond_profiles_every_stage_once_per_payload() -> None:
    lines: list[str] = []
    prof = sg.profile(diamond(), [{"x": 1}, {"x": 2}, {"x": 3}], budget_s=0.2,
                      progress=lines.append)
    assert prof.pipeline == "diamond"
    assert [(s.stage, s.method, s.calls) for s in prof.stages] == [
        ("Inc", "__call__", 3), ("double", None, 3), ("triple", None, 3), ("add", None, 3)]
    assert _timings(prof) == {"Inc.__call__": [1], "double": [1], "triple": [1], "add": [1]}
    assert all(t.median_ms > 0 and t.samples >= 1 and t.per_item_ms == t.median_ms
               for s in prof.stages for t in s.service_ms)
    assert [line.split(" (")[0] for line in lines] == [
        "profiling Inc.__call__", "profiling double", "profiling triple", "profiling add"]
    assert prof.payloads == 3 and prof.machine.cpus >= 1


def test_batched_method_is_timed_at_powers_of_two_up_to_its_max() -> None:
    prof = sg.profile(scoring(), SCORING, budget_s=0.3)
    # score: one call node per payload plus the map's elements (3 + 0)
    assert [(s.stage, s.method, s.calls) for s in prof.stages] == [
        ("Scorer", "score", 5), ("Scorer", "scale", 2), ("summarize", None, 2)]
    assert _timings(prof) == {"Scorer.score": [1, 2, 4, 8], "Scorer.scale": [1],
                              "summarize": [1]}
    score = prof.stage("Scorer.score")
    for timing in score.service_ms:
        assert timing.median_ms > 0 and timing.samples >= 1
        assert timing.per_item_ms == pytest.approx(timing.median_ms / timing.batch_size)
    assert all(stage.peak_memory_bytes >= 0 for stage in prof.stages)
    assert score.summary().startswith("Scorer.score: 5 calls; batch 1 ")


def test_profile_round_trips_through_json() -> None:
    prof = sg.profile(halves(), [{"n": 4}, {"n": 6}], budget_s=0.1)
    assert _timings(prof) == {"Halver.halve": [1, 2, 4, 8]}
    assert Profile.model_validate_json(prof.model_dump_json()) == prof


def test_a_tiny_budget_still_takes_one_sample_of_each_timing() -> None:
    prof = sg.profile(scoring(), SCORING, budget_s=1e-9)
    timings = [t for stage in prof.stages for t in stage.service_ms]
    assert len(timings) == 6
    assert all(t.samples >= 1 and t.median_ms > 0 for t in timings)


def test_batch_sizes_end_at_the_max() -> None:
    assert batch_sizes(1) == [1]
    assert batch_sizes(8) == [1, 2, 4, 8]
    assert batch_sizes(6) == [1, 2, 4, 6]


def test_bad_profiles_say_what_to_do() -> None:
    with pytest.raises(sg.PipelineError, match="at least one payload"):
        sg.profile(diamond(), [])
    with pytest.raises(sg.PipelineError, match="budget_s must be > 0"):
        sg.profile(diamond(), [{"x": 1}], budget_s=0)
    with pytest.raises(sg.PipelineError, match="payload 2 failed, so it cannot be profiled"):
        sg.profile(scoring(), [SCORING[0], {"query": "boom", "words": [], "factor": 1}],
                   budget_s=0.1)


def test_a_maps_extra_arguments_are_replayed_with_each_element() -> None:
    prof = sg.profile(profile_stages.graph(), profile_stages.PAYLOADS, budget_s=0.1)
    assert _timings(prof) == {"weigh": [1], "Rounder.round": [1, 2, 4]}
    assert prof.stage("weigh").calls == prof.stage("Rounder.round").calls == 3
    calls = asyncio.run(recorded_calls(sg.compile(profile_stages.graph()),
                                       profile_stages.PAYLOADS))
    assert calls == {("weigh", None): [(("a", 1.5), {}), (("bb", 1.5), {}), (("ccc", 2.0), {})],
                     ("Rounder", "round"): [((1.5,), {}), ((3.0,), {}), ((6.0,), {})]}


@pytest.mark.ray
def test_a_profile_on_the_ray_cluster_runs_there_on_the_cpus_it_holds(ray_serve: int) -> None:
    """`address=`: the measuring is a Ray task holding 2 CPUs on a node of the cluster; the
    profile describes that node's 2 CPUs and sweeps threads over them."""
    import ray

    from servegraph.serving.profile_remote import largest_node_cpus

    address = ray.get_runtime_context().gcs_address
    prof = sg.profile(diamond(), [{"x": 1}, {"x": 2}], budget_s=0.2, address=address, cpus=2)
    assert [(s.stage, s.method, s.calls) for s in prof.stages] == [
        ("Inc", "__call__", 2), ("double", None, 2), ("triple", None, 2), ("add", None, 2)]
    assert prof.machine.cpus == 2
    assert [[t.threads for t in s.threads_ms] for s in prof.stages] == [[1, 2]] * 4
    largest = largest_node_cpus()
    with pytest.raises(sg.PipelineError) as caught:
        sg.profile(diamond(), [{"x": 1}], budget_s=0.2, address=address, cpus=largest + 1)
    assert str(caught.value) == (
        f"cannot profile on {largest + 1} CPUs: the cluster's largest node has {largest} "
        f"(profile with cpus={largest} or fewer)")
    with pytest.raises(sg.PipelineError, match="profile cpus must be >= 1, got 0"):
        sg.profile(diamond(), [{"x": 1}], address=address, cpus=0)

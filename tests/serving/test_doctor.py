# ruff: noqa: E501 - the metrics text below is quoted as Ray exports it, one series a line
"""`servegraph doctor`'s pure parts on literal inputs: the endpoint's text summed per stage
(`observe`), and figures, Serve's states and the plan turned into rows and findings
(`doctor.diagnose`)."""

from __future__ import annotations

import math

import pytest

from servegraph.compiler.plan import BatchPlan, StagePlan
from servegraph.compiler.profile import BatchTiming, Machine, Profile, StageProfile
from servegraph.serving.doctor import DeploymentState, Thresholds, diagnose
from servegraph.serving.observe import StageFigures, bucket_quantile, delta, parse, stage_figures

TEXT = """\
# HELP ray_servegraph_stage_calls_total stage calls finished
# TYPE ray_servegraph_stage_calls_total counter
ray_servegraph_stage_calls_total{WorkerId="a",application="search",node="n2",stage="Encoder"} 90.0
ray_servegraph_stage_calls_total{WorkerId="b",application="search",node="n2",stage="Encoder"} 10.0
ray_servegraph_stage_calls_total{WorkerId="c",application="other",node="n2",stage="Encoder"} 7.0
# HELP ray_servegraph_stage_started_total stage calls begun
# TYPE ray_servegraph_stage_started_total counter
ray_servegraph_stage_started_total{WorkerId="a",application="search",node="n2",stage="Encoder"} 104.0
# HELP ray_servegraph_stage_latency_ms stage call
# TYPE ray_servegraph_stage_latency_ms histogram
ray_servegraph_stage_latency_ms_bucket{application="search",node="n2",stage="Encoder",le="10.0"} 50.0
ray_servegraph_stage_latency_ms_bucket{application="search",node="n2",stage="Encoder",le="20.0"} 99.0
ray_servegraph_stage_latency_ms_bucket{application="search",node="n2",stage="Encoder",le="+Inf"} 100.0
ray_servegraph_stage_latency_ms_count{application="search",node="n2",stage="Encoder"} 100.0
ray_servegraph_stage_latency_ms_sum{application="search",node="n2",stage="Encoder"} 900.0
# HELP ray_servegraph_stage_errors_total errors
# TYPE ray_servegraph_stage_errors_total counter
ray_servegraph_stage_errors_total{application="search",error_type="ValueError",node="n2",stage="Encoder"} 3.0
# HELP ray_servegraph_replica_starts_total starts
# TYPE ray_servegraph_replica_starts_total counter
ray_servegraph_replica_starts_total{WorkerId="a",application="search",stage="Encoder"} 1.0
ray_servegraph_replica_starts_total{WorkerId="x",application="search",stage="Encoder"} 1.0
# HELP ray_servegraph_replica_init_seconds_total init
# TYPE ray_servegraph_replica_init_seconds_total counter
ray_servegraph_replica_init_seconds_total{WorkerId="a",application="search",stage="Encoder"} 30.0
ray_servegraph_replica_init_seconds_total{WorkerId="x",application="search",stage="Encoder"} 46.0
# HELP ray_serve_deployment_queued_queries queued
# TYPE ray_serve_deployment_queued_queries gauge
ray_serve_deployment_queued_queries{application="search",deployment="Encoder",handle="h"} 140.0
# HELP ray_other_metric unrelated
# TYPE ray_other_metric gauge
ray_other_metric 1.0
"""


def encoder(**options: object) -> StagePlan:
    return StagePlan(name="Encoder", kind="class", options={"max_ongoing_requests": 4,
                                                            **options})


def test_figures_sum_replicas_of_one_application() -> None:
    figures = stage_figures(parse(TEXT), "search")["Encoder"]
    assert figures.calls == 100 and figures.started == 104 and figures.in_flight == 4
    assert figures.errors == {"ValueError": 3} and figures.queued == 140
    assert figures.replica_starts == 2 and figures.cold_start_s == 38
    assert figures.latency_ms(0.5) == 10.0
    assert figures.latency_ms(0.99) == 20.0


def test_parse_keeps_only_our_families_and_serves() -> None:
    """Other families' lines never reach the parser, even one whose help text names ours or
    one malformed for it."""
    noise = ("# HELP ray_noise_total mentions ray_servegraph_stage_calls_total\n"
             "# TYPE ray_noise_total counter\nray_noise_total{a=\"b\"} not-a-number\n"
             "# a comment of no family\n")
    names = {sample.name for sample in parse(noise + TEXT)}
    assert names == {sample.name for sample in parse(TEXT)}
    assert all(name.startswith(("ray_servegraph_", "ray_serve_")) for name in names)
    assert "ray_serve_deployment_queued_queries" in names


def test_parse_of_one_application_keeps_only_its_series() -> None:
    assert {sample.labels["application"] for sample in parse(TEXT, application="other")} \
        == {"other"}
    assert stage_figures(parse(TEXT, application="search"), "search") \
        == stage_figures(parse(TEXT), "search")


def test_quantiles_interpolate_inside_a_bucket() -> None:
    assert bucket_quantile({10.0: 0.0, 20.0: 10.0, math.inf: 10.0}, 0.5) == 15.0
    assert bucket_quantile({10.0: 0.0, math.inf: 0.0}, 0.5) is None
    assert bucket_quantile({10.0: 5.0, math.inf: 10.0}, 0.99) == 10.0


def test_delta_is_what_happened_between_scrapes() -> None:
    before = parse(TEXT)
    after = [s.__class__(s.name, s.labels, s.value * 2) for s in before]
    recent = stage_figures(delta(after, before), "search")["Encoder"]
    assert recent.calls == 100


def test_a_saturated_stage_is_the_bottleneck_with_its_fix() -> None:
    figures = stage_figures(parse(TEXT), "search")
    report = diagnose("search", figures, {"Encoder": DeploymentState("HEALTHY", "",
                                                                     {"RUNNING": 1})},
                      [encoder()], {"CPU": 4.0})
    assert report.bottleneck == "Encoder"
    row = report.stages[0]
    assert row.utilisation == 1.0 and row.queued == 140 and row.replicas == "1/1"
    kinds = {finding.kind: finding for finding in report.findings}
    assert kinds["saturated"].line() == (
        "Encoder: 100% busy, 140 queued: raise num_replicas to 2 (fits on the cluster): "
        "@sg.deployment(num_replicas=2) or autoscaling_config max_replicas>=2")
    assert kinds["cold_start"].message == "cold start 38.0 s: model load in __init__"
    assert kinds["restarted"].message.startswith("1 replica(s) replaced (2 started, 1 running)")
    assert kinds["errors"].message == "3 failed call(s): 3 ValueError"


def test_raising_replicas_that_do_not_fit_says_what_is_short() -> None:
    figures = {"Encoder": StageFigures("Encoder", calls=10, started=14)}
    report = diagnose("search", figures, {"Encoder": DeploymentState("HEALTHY", "",
                                                                     {"RUNNING": 1})},
                      [encoder()], {"CPU": 0.0})
    assert report.findings[0].fix.startswith(
        "raise num_replicas to 2 (needs 1 CPU more than is free)")


def test_a_pending_replica_names_the_missing_resource() -> None:
    stage = StagePlan(name="Ranker", kind="class",
                      options={"ray_actor_options": {"resources": {"big_gpu": 1}}})
    report = diagnose("search", {}, {"Ranker": DeploymentState(
        "UPDATING", "Deployment 'Ranker' has 1 replicas that have taken more than 30s to be "
        "scheduled.", {"STARTING": 1})}, [stage], {"CPU": 3.0})
    (finding,) = report.findings
    assert finding.kind == "pending"
    assert finding.message.startswith("1 replica(s) pending (STARTING): needs 1 CPU, 1 big_gpu "
                                      "per replica, cluster has 0 big_gpu")
    assert "taken more than 30s" in finding.message
    assert finding.fix == "add a node with big_gpu or lower ray_actor_options"
    assert report.bottleneck is None


def test_a_quiet_healthy_stage_has_no_findings() -> None:
    figures = {"Encoder": StageFigures("Encoder", calls=10, started=10, replica_starts=1,
                                       init_seconds=0.2)}
    report = diagnose("search", figures, {"Encoder": DeploymentState(
        "HEALTHY", "", {"RUNNING": 1})}, [encoder()], {"CPU": 1.0})
    assert report.findings == [] and report.bottleneck is None
    assert report.to_json()["stages"][0]["utilisation"] == 0.0


def test_the_profile_gives_the_predicted_service_time() -> None:
    profile = Profile(pipeline="search", machine=Machine(cpus=2, platform="linux",
                                                         python="3.12"),
                      payloads=1, budget_s=1.0, stages=[StageProfile(
                          stage="Encoder", method="encode", calls=1, peak_memory_bytes=0,
                          service_ms=[BatchTiming(batch_size=1, median_ms=2.0, per_item_ms=2.0,
                                                  samples=3)])])
    figures = stage_figures(parse(TEXT), "search")
    report = diagnose("search", figures, {"Encoder": DeploymentState("HEALTHY", "",
                                                                     {"RUNNING": 1})},
                      [encoder()], {"CPU": 4.0}, profile, Thresholds(cold_start_s=60))
    assert report.stages[0].profiled_ms == 2.0
    assert [f.kind for f in report.findings if f.kind == "slow"] == ["slow"]


@pytest.mark.parametrize("state", ["UNHEALTHY", "DEPLOY_FAILED"])
def test_an_unhealthy_deployment_is_reported(state: str) -> None:
    report = diagnose("search", {}, {"Encoder": DeploymentState(state, "boom", {})},
                      [encoder()], {})
    assert [(f.kind, f.message) for f in report.findings] == [
        ("unhealthy", f"Serve says {state}: boom")]


def test_a_batched_stage_is_busy_once_its_batches_are_full() -> None:
    """Calls past a full batch wait in the replica's batch queue: queued, not working."""
    stage = StagePlan(name="Encoder", kind="class", options={"max_ongoing_requests": 1000},
                      batching={"encode": BatchPlan(max_batch_size=32,
                                                    batch_wait_timeout_s=0.01)})
    figures = {"Encoder": StageFigures("Encoder", calls=3000, started=3535,
                                       batch_buckets={16.0: 10.0, 32.0: 30.0,
                                                      math.inf: 30.0})}
    report = diagnose("search", figures, {"Encoder": DeploymentState(
        "HEALTHY", "", {"RUNNING": 1})}, [stage], {"CPU": 2.0})
    row = report.stages[0]
    assert (row.utilisation, row.in_flight, row.queued) == (1.0, 535, 503)
    assert row.batch_fill == pytest.approx((10 * 16 + 20 * 32) / 30 / 32)
    assert report.findings[0].line().startswith(
        "Encoder: 100% busy, 503 queued: raise num_replicas to 2 (fits on the cluster)")

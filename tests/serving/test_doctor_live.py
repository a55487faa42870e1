"""`servegraph doctor` on a real Serve: each finding produced by the condition it names (a
saturated stage, a pending replica, a slow constructor, a killed replica), and the `doctor`
and `top` verbs' output. Metrics reach Ray's endpoint a second or so after they are recorded,
so each test asks the doctor again until the finding shows (`until`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from ray import serve

import servegraph as sg
from servegraph.cli import main
from servegraph.serving.app import bind_app
from servegraph.serving.doctor import Report, Thresholds, examine
from tests import metrics_stages as ms
from tests import reliability_stages as rs
from tests.reliability_stages import until

pytestmark = pytest.mark.ray


def kinds(report: Report, stage: str) -> set[str]:
    return {finding.kind for finding in report.findings if finding.stage == stage}


def finding(app: str, stage: str, kind: str, **options: Any) -> Report:
    """The doctor's report once it has `kind` for `stage`."""
    return until(lambda: examine(app, **options), lambda r: kind in kinds(r, stage),
                 f"doctor to find {kind} on {stage}")


def test_a_saturated_stage(deploy: Callable[..., Any]) -> None:
    """The stage's calls wait on a `Gate` the test opens once the doctor has seen them: the
    stage stays saturated however slowly its metrics reach Ray."""
    import ray

    gate = ms.Gate.options(name="saturated", namespace=ms.GATES).remote()
    try:
        handle = deploy(ms.crawling(gated=True), name="crawling")
        callers = [threading.Thread(target=handle.call, args=({"x": i, "gate": "saturated"},))
                   for i in range(6)]
        for caller in callers:
            caller.start()
        try:  # Serve's queue may be seen before the replica's first started counts reach Ray
            report = until(lambda: examine("crawling"), lambda r: any(
                f.kind == "saturated" and f.message.startswith("100% busy")
                for f in r.findings), "doctor to find crawl saturated and 100% busy")
        finally:
            ray.get(gate.open.remote())
            for caller in callers:
                caller.join()
    finally:
        ray.kill(gate)
    assert report.bottleneck == "crawl"
    (found,) = [f for f in report.findings if f.kind == "saturated"]
    assert found.stage == "crawl" and found.message.startswith("100% busy")
    assert found.fix.startswith("raise num_replicas to 2 (")


def test_a_pending_replica(ray_serve: int) -> None:
    """A stage asking for a resource the session's Ray does not have never gets placed."""
    app = bind_app(sg.compile(ms.unplaced()))
    # deployed without waiting: `serve.run` would wait for every replica to run, forever here
    # (and after `serve.delete` too: a deleted application is NOT_STARTED, never RUNNING)
    serve.run_many([serve.RunTarget(app, name="unplaced", route_prefix="/unplaced")],
                   wait_for_ingress_deployment_creation=False,
                   wait_for_applications_running=False)
    try:
        until(lambda: "unplaced" in serve.status().applications, bool, "the application")
        report = finding("unplaced", "unplaceable", "pending")
    finally:
        serve.delete("unplaced")
    (found,) = [f for f in report.findings if f.kind == "pending"]
    assert "needs 1 CPU, 1 servegraph_absent per replica, cluster has 0 servegraph_absent" \
        in found.message
    assert found.fix == "add a node with servegraph_absent or lower ray_actor_options"
    assert kinds(report, "square") == set()


def test_a_slow_constructor(deploy: Callable[..., Any]) -> None:
    deploy(ms.slow_starting(), name="slow_starting")
    report = finding("slow_starting", "SlowStart", "cold_start",
                     thresholds=Thresholds(cold_start_s=1.0))
    (found,) = report.findings
    assert found.message.startswith("cold start 1.")
    assert found.message.endswith("s: model load in __init__")


def test_a_killed_replica(deploy: Callable[..., Any]) -> None:
    # a 1 s health check: Serve notices the killed replica within a second, not ten
    deploy(ms.lingering(health_check_period_s=1, health_check_timeout_s=5), name="killed")
    killed = rs.kill_replica("killed", "linger")
    rs.wait_until(rs.recovered("killed", "linger", killed, 1), timeout_s=60,
                  what="a replacement replica")
    report = finding("killed", "linger", "restarted")
    (found,) = report.findings
    assert found.message.startswith("1 replica(s) replaced (2 started, 1 running)")


def test_doctor_and_top_verbs(deploy: Callable[..., Any],
                              capsys: pytest.CaptureFixture[str]) -> None:
    handle = deploy(ms.lingering(), name="verbs")
    handle.call({"seconds": 0})
    until(lambda: examine("verbs").stages[0].calls, lambda calls: calls == 1, "one call")
    assert main(["doctor", "verbs", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["application"] == "verbs" and report["findings"] == []
    assert [(row["stage"], row["calls"], row["replicas"]) for row in report["stages"]] == [
        ("linger", 1, "1/1")]
    assert main(["doctor", "verbs"]) == 0
    text = capsys.readouterr().out
    assert "linger" in text and "no findings" in text and "bottleneck: none" in text
    assert main(["top", "verbs", "--once"]) == 0
    frame = capsys.readouterr().out
    assert "verbs: stages" in frame and "linger" in frame

"""Per-stage metrics on a real Serve: requests through the `metered` graph, then Ray's
Prometheus endpoint scraped and parsed with `prometheus_client`'s parser (`serving.observe`),
one test per metric family, exact where the counts are deterministic. Ray exports what a
process records every second in the test session (`serving.session.METRICS_ENV`), so each test
asks again until the figures arrive (`until`), the metered tests starting from the module's
last scrape."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import servegraph as sg
from servegraph.serving.observe import Sample, parse, scrape
from tests import metrics_stages as ms
from tests.reliability_stages import until

pytestmark = pytest.mark.ray

APP = "metered"
OK = {"x": 3, "nap": 0, "items": [1, 2, 3, 4]}
PAYLOADS = [OK, OK, OK, {**OK, "x": -1}, {**OK, "nap": 2}]  # 3 ok, a ValueError, a timeout


class Samples(list[Sample]):
    """A scrape's samples, reported by their count when a wait for them fails."""

    def __repr__(self) -> str:
        return f"<{len(self)} samples>"


class Metered(dict[str, str]):
    """The metered graph's node ids by stage, and the module's last scrape (`settled`)."""

    latest: Samples | None = None


@pytest.fixture(scope="module")
def metered(ray_serve: int) -> Iterator[Metered]:
    """The graph served and its five requests made; its node ids by stage."""
    plan = sg.compile(ms.metered())
    handle = sg.serve(plan, name=APP)
    try:
        for payload in PAYLOADS:
            try:
                handle.call(payload)
            except sg.PipelineError:
                pass
        yield Metered({node.stage: node.id for node in plan.nodes if node.stage})
    finally:
        handle.shutdown(wait=False)


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == f"ray_servegraph_{name}" and
               all(s.labels.get(k) == v for k, v in labels.items()))


def settled(metered: Metered, name: str, expected: float, **labels: str) -> list[Sample]:
    """The samples once the sum of `name` over `labels` reaches `expected` (exactly). The
    module's last scrape is read first: the figures stop changing once the five requests are
    answered, and a scrape of a session's Ray holding every test's series takes seconds."""
    labels = {"application": APP, **labels}

    def ask() -> Samples:
        if metered.latest is None or total(metered.latest, name, **labels) < expected:
            metered.latest = Samples(parse(scrape(), application=APP))
        return metered.latest

    found = until(ask, lambda s: total(s, name, **labels) >= expected,
                  f"{name} {labels} to reach {expected}")
    assert total(found, name, **labels) == expected
    return found


def test_calls_per_stage_and_node(metered: Metered) -> None:
    settled(metered, "stage_calls_total", 5, stage="square", node=metered["square"])
    settled(metered, "stage_calls_total", 5, stage="nap", node=metered["nap"])
    found = settled(metered, "stage_calls_total", 20, stage="Scorer", node=metered["Scorer"])
    assert total(found, "stage_started_total", application=APP, stage="Scorer") == 20


def test_errors_by_type(metered: Metered) -> None:
    found = settled(metered, "stage_errors_total", 1, stage="square", error_type="ValueError")
    assert total(found, "stage_errors_total", application=APP, stage="Scorer") == 0
    settled(metered, "stage_errors_total", 1, stage="nap", error_type="StageTimeoutError")


def test_timeouts(metered: Metered) -> None:
    found = settled(metered, "stage_timeouts_total", 1, stage="nap", node=metered["nap"])
    assert total(found, "stage_timeouts_total", application=APP, stage="square") == 0


def test_latency_histogram_per_stage_and_node(metered: Metered) -> None:
    found = settled(metered, "stage_latency_ms_count", 5, stage="nap", node=metered["nap"])
    buckets = {float(s.labels["le"]): s.value for s in found
               if s.name == "ray_servegraph_stage_latency_ms_bucket" and
               s.labels.get("stage") == "nap" and s.labels.get("application") == APP}
    assert buckets[float("inf")] == 5
    assert buckets[200.0] == 4  # four naps of 0 s; the timed-out one ran 0.5 s
    assert buckets[1000.0] == 5


def test_batch_sizes(metered: Metered) -> None:
    """One four-element chunk per request: its four calls make one batch of four."""
    found = settled(metered, "batch_size_count", 5, stage="Scorer", method="score")
    assert total(found, "batch_size_bucket", application=APP, stage="Scorer", le="2.0") == 0
    assert total(found, "batch_size_bucket", application=APP, stage="Scorer", le="4.0") == 5


def test_map_width(metered: Metered) -> None:
    found = settled(metered, "map_width_count", 5, stage="Scorer", node=metered["Scorer"])
    assert total(found, "map_width_bucket", application=APP, node=metered["Scorer"],
                 le="2.0") == 0
    assert total(found, "map_width_bucket", application=APP, node=metered["Scorer"],
                 le="4.0") == 5


def test_end_to_end_latency_and_requests(metered: Metered) -> None:
    found = settled(metered, "pipeline_requests_total", 3, pipeline="metered", outcome="ok")
    found = settled(metered, "pipeline_requests_total", 2, pipeline="metered", outcome="error")
    assert total(found, "pipeline_latency_ms_count", application=APP, pipeline="metered",
                 route="") == 5


def test_replica_starts(metered: Metered) -> None:
    found = settled(metered, "replica_starts_total", 1, stage="Scorer")
    assert total(found, "replica_init_seconds_total", application=APP, stage="Scorer") > 0


def test_in_flight(deploy: Callable[..., Any]) -> None:
    """A call running shows as started - finished (counters: Ray drops a gauge's series a
    few seconds after its last set, so the doctor reads these); none once it ends. The call
    waits on a `Gate` the test opens once it has seen the call in flight."""
    import ray

    gate = ms.Gate.options(name="in-flight", namespace=ms.GATES).remote()
    try:
        handle = deploy(ms.gated(), name="gated")
        call = threading.Thread(target=handle.call, args=({"gate": "in-flight"},))
        call.start()
        labels = {"application": "gated", "stage": "held"}

        def in_flight() -> float:
            samples = parse(scrape(), application="gated")
            return (total(samples, "stage_started_total", **labels)
                    - total(samples, "stage_calls_total", **labels))

        try:
            until(in_flight, lambda running: running == 1, "one call in flight")
        finally:
            ray.get(gate.open.remote())
            call.join()
        ended = until(lambda: Samples(parse(scrape(), application="gated")),
                      lambda samples: total(samples, "stage_calls_total", **labels) == 1,
                      "the call to finish")
        assert total(ended, "stage_started_total", **labels) == 1
    finally:
        ray.kill(gate)


def test_end_to_end_latency_per_route(deploy: Callable[..., Any]) -> None:
    """An `sg.App`'s driver labels each graph's requests with its route."""
    handle = deploy(sg.App({"/crawl": ms.crawling()}), name="routed")
    handle["crawling"].call({"x": 1})
    settled_app = until(lambda: Samples(parse(scrape(), application="routed")), lambda s: total(
        s, "pipeline_requests_total", application="routed", route="/crawl") >= 1,
        "the routed request")
    assert total(settled_app, "pipeline_latency_ms_count", application="routed",
                 pipeline="crawling", route="/crawl") == 1


def test_a_stage_fused_into_the_driver_records_there(deploy: Callable[..., Any]) -> None:
    plan = sg.compile(ms.fused())
    assert plan.stage("halve").fused_into == "fused_metered_driver"
    handle = deploy(plan, name="fused-metered")
    for x in (1, 2, 3):
        assert handle.call({"x": x}) == x * x / 2
    labels = {"application": "fused-metered", "stage": "halve",
              "node": next(node.id for node in plan.nodes if node.stage == "halve")}
    found = until(lambda: Samples(parse(scrape(), application="fused-metered")),
                  lambda s: total(s, "stage_calls_total", **labels) >= 3, "the fused calls")
    assert total(found, "stage_calls_total", **labels) == 3
    assert total(found, "stage_latency_ms_count", **labels) == 3

"""The capacity pass on synthetic profiles: hand-made service-time tables give the replica
counts a hand calculation gives (see `compiler.capacity` for the formulas), the errors are
exact, and a planned plan still packs and validates against Ray's own Serve schema."""

from __future__ import annotations

import pytest

import servegraph as sg
from servegraph.compiler import capacity as model
from servegraph.compiler.capacity import StageLoad, size_stage
from servegraph.compiler.profile import BatchTiming, Machine, StageProfile, ThreadTiming
from tests.compiler.emit.test_serve_config import ray_reads
from tests.stages import Inc, add, batch_probe, diamond, double, scoring, triple

MACHINE = Machine(cpus=2, platform="test", python="3")


pytestmark = pytest.mark.usefixtures("serve_costs")  # conftest: Serve's costs pinned


def _stage(label: str, calls: int, batches: dict[int, float],
           threads: dict[int, float] | None = None, maps: tuple[int, int] = (0, 0)
           ) -> StageProfile:
    """A hand-made profile of `Stage.method` (or a function): ms per call by batch size on
    one CPU, and the largest batch's ms by thread count."""
    stage, _, method = label.partition(".")
    largest = max(batches)
    swept = threads or {1: batches[largest]}
    return StageProfile(
        stage=stage, method=method or None, calls=calls, peak_memory_bytes=0,
        service_ms=[BatchTiming(batch_size=size, median_ms=ms, per_item_ms=ms / size,
                                samples=5) for size, ms in batches.items()],
        threads_ms=[ThreadTiming(threads=count, batch_size=largest, median_ms=ms, samples=5)
                    for count, ms in swept.items()], maps=maps[0], map_calls=maps[1])


def diamond_profile(inc_threads: dict[int, float] | None = None) -> sg.Profile:
    """Inc 10 ms a call (on 2 CPUs: 6 ms unless told), double and triple 1 ms, add 0.5 ms;
    each called once per request (10 payloads)."""
    return sg.Profile(pipeline="diamond", machine=MACHINE, payloads=10, budget_s=1.0, stages=[
        _stage("Inc.__call__", 10, {1: 10.0}, inc_threads or {1: 10.0, 2: 6.0}),
        _stage("double", 10, {1: 1.0}), _stage("triple", 10, {1: 1.0}),
        _stage("add", 10, {1: 0.5})])


def split_diamond() -> sg.Graph:
    """The diamond with Inc kept out of the driver (`fuse=False`): the split layout."""
    with sg.InputNode() as inp:
        a = Inc.options(fuse=False).bind().__call__.bind(inp.x)
        out = add.bind(double.bind(a), triple.bind(a))
    return sg.Graph(out, name="diamond")


def _planned(plan: sg.CompiledPipeline) -> dict[str, tuple[int, float]]:
    return {stage.name: (stage.resources.replicas.start, stage.resources.cpus)
            for stage in plan.deployments}


@pytest.mark.parametrize(("rps", "inc"), [
    (50, (1, 1.0)),    # 50 / (0.8 * 100) = 0.63 -> 1 replica of 1 CPU
    (150, (2, 1.0)),   # 1 CPU: ceil(150 / 80) = 2 (2 CPUs); 2 CPUs: ceil(150 / 133) = 2 (4)
    (300, (4, 1.0)),   # ceil(300 / 80) = 4 (4 CPUs) against ceil(300 / 133) = 3 (6)
])
def test_replicas_for_a_target_are_the_hand_calculation(rps: float,
                                                        inc: tuple[int, float]) -> None:
    plan = sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=16), profile=diamond_profile(),
                      target=sg.Target(rps=rps))
    # the light stages (one replica of one CPU is plenty) reserve no CPU and stay fusable
    assert _planned(plan) == {"Inc": inc, "double": (1, 0.0), "triple": (1, 0.0),
                              "add": (1, 0.0)}
    assert [s.name for s in plan.fused()] == ["double", "triple", "add"]
    assert plan.passes == ["validate", "typecheck", "resources", "capacity", "pack", "fuse",
                           "lower"]


def test_threads_win_when_they_save_cpus() -> None:
    """Inc at 4 ms on 2 CPUs (250 req/s a replica): at 350 req/s one CPU needs
    ceil(350 / 80) = 5 replicas (5 CPUs), two need ceil(350 / 200) = 2 (4 CPUs)."""
    profile = diamond_profile({1: 10.0, 2: 4.0})
    plan = sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=16), profile=profile,
                      target=sg.Target(rps=350))
    assert _planned(plan)["Inc"] == (2, 2.0)
    # at 300 req/s both take 4 CPUs: the tie goes to fewer replicas of more threads
    plan = sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=16), profile=profile,
                      target=sg.Target(rps=300))
    assert _planned(plan)["Inc"] == (2, 2.0)


def test_spare_cpus_go_to_a_thread_when_it_serves_nearly_as_much() -> None:
    """Most throughput on 2 CPUs with Inc the bottleneck, in the split layout (Inc `fuse=False`:
    it never runs in the driver): the second CPU as a thread (10 -> 5.4 ms: 185 req/s) against a
    replica (200 req/s): 185 >= 0.9 * 200, so a thread."""
    ratio = {1: 10.0, 2: 5.4}
    profile = diamond_profile(ratio)
    assert model.grown(model.StageLoad("s", 1, (10.0, 5.4), (10.0, 5.4)), model.Sizing(1, 1),
                       1.0) == model.Sizing(1, 2)
    assert model.grown(model.StageLoad("s", 1, (10.0, 6.0), (10.0, 6.0)), model.Sizing(1, 1),
                       1.0) == model.Sizing(2, 1)
    assert model.grown(model.StageLoad("s", 1, (10.0, 5.4), (10.0, 5.4)), model.Sizing(1, 1),
                       0.5) is None
    plan = sg.compile(split_diamond(), cluster=sg.ClusterSpec(cpus=2), profile=profile)
    assert _planned(plan)["Inc"] == (1, 2.0)


def test_a_target_with_spare_cpus_autoscales_from_its_count() -> None:
    plan = sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=6), profile=diamond_profile(),
                      target=sg.Target(rps=150))
    inc = plan.stage("Inc")
    assert inc.options["autoscaling_config"] == {
        "min_replicas": 2, "initial_replicas": 2, "max_replicas": 6,
        "target_ongoing_requests": 1.0}
    assert inc.resources.replicas == sg.compiler.ReplicaRange(start=2, min=2, max=6,
                                                               autoscaling=True)
    assert inc.options["max_ongoing_requests"] == 5  # Serve's default is already enough


def test_most_throughput_is_what_the_cpus_allow() -> None:
    """The split layout (Inc `fuse=False`). Per request: 12.5 ms of stage work, and Serve's
    REQUEST_CPU_MS + CALL_CPU_MS for the one call to Inc's own deployment: 4 CPUs serve
    4000 / 17.2 = 233 req/s; Inc needs ceil(233 / 100) = 3 replicas and gets the CPU left
    over as a fourth, the driver (0.7 * 4.7 + 2.5 = 5.79 ms a request) 2 replicas."""
    assert model.REQUEST_CPU_MS + model.CALL_CPU_MS == pytest.approx(4.7)
    plan = sg.compile(split_diamond(), cluster=sg.ClusterSpec(cpus=4),
                      profile=diamond_profile())
    capacity = plan.capacity
    assert capacity is not None and capacity.target is None
    assert capacity.cpu_bound_rps == pytest.approx(4000 / 17.2)
    assert capacity.capacity_rps == pytest.approx(4000 / 17.2)
    assert capacity.bottleneck == "the cluster's CPUs"
    assert _planned(plan)["Inc"] == (4, 1.0)
    assert plan.driver.resources.replicas.start == 2
    rows = {row.stage: row for row in capacity.stages}
    assert rows["Inc"].throughput_rps == pytest.approx(400)
    assert rows["Inc"].utilisation == pytest.approx(4000 / 17.2 / 400)
    assert rows["diamond_driver"].throughput_rps == pytest.approx(2 * 1000 / 5.79)


def test_batched_stage_sizes_at_its_largest_batch() -> None:
    """Scorer.score: 5 calls a request (1 + a 4-word map), 2 ms/item at batch 8 on one CPU;
    scale 1 ms once; summarize 0.1 ms: 11 ms a request, 90.9 req/s a replica."""
    profile = sg.Profile(pipeline="scoring", machine=MACHINE, payloads=2, budget_s=1.0, stages=[
        _stage("Scorer.score", 10, {1: 4.0, 8: 16.0}, maps=(2, 8)),
        _stage("Scorer.scale", 2, {1: 1.0}), _stage("summarize", 2, {1: 0.1})])
    plan = sg.compile(scoring(), cluster=sg.ClusterSpec(cpus=8), profile=profile,
                      target=sg.Target(rps=100))
    assert _planned(plan) == {"Scorer": (2, 1.0), "summarize": (1, 0.0)}  # 100 / 72.7 -> 2
    assert plan.stage("Scorer").options["max_ongoing_requests"] == 64  # declared, kept
    load = model.stage_load("Scorer", profile.methods_of("Scorer"), 2, {"score": 8}, {})
    assert (load.calls, load.batch, load.work(1)) == (6, 8, 11.0)


def test_size_stage_on_literal_loads() -> None:
    load = StageLoad("s", calls=1, work_ms=(10.0, 6.0, 5.0), call_ms=(10.0, 6.0, 5.0))
    assert size_stage(load, 100, 1.0) == size_stage(load, 100, 0.5 * 2)
    assert size_stage(load, 100, 1.0).replicas == 1
    assert (size_stage(load, 500, 1.0).replicas, size_stage(load, 500, 1.0).threads) == (5, 1)
    assert size_stage(load, 1, 1.0, max_threads=1).cpus == 1


def test_a_target_the_cluster_cannot_serve_names_the_bottleneck() -> None:
    with pytest.raises(sg.CapacityError) as caught:
        sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=2), profile=diamond_profile(),
                   target=sg.Target(rps=300))
    assert str(caught.value) == (
        "[capacity] stage 'Inc': 300 req/s needs 7 CPUs for its stages and the cluster has 2; "
        "the bottleneck is 4 replicas x 1 CPU at 80% busy (one replica serves 100 req/s)\n"
        "  hint: give the cluster 5 more CPUs (sg.ClusterSpec(cpus=7)), or aim at 109 req/s, "
        "the most it serves")
    assert caught.value.stage == "Inc" and caught.value.pass_name == "capacity"


def test_a_target_short_of_cpu_work_names_the_heaviest_stage() -> None:
    """200 req/s fits 3 CPUs of replicas (Inc 3 x 1) but not the work: 200 * 17.2 ms / 0.8.
    The most it serves is the fused layout's (every stage in the driver, no Serve call but
    the request's: 12.5 + 2.2 ms): 3 CPUs at 80% serve 2400 / 14.7 = 163 req/s (the split
    layout's 2400 / 17.2 = 140)."""
    with pytest.raises(sg.CapacityError) as caught:
        sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=3), profile=diamond_profile(),
                   target=sg.Target(rps=200))
    assert str(caught.value) == (
        "[capacity] stage 'Inc': 200 req/s needs 4.3 CPUs busy (12.5 ms of stage work and "
        "4.7 ms of Serve's calls per request, at 80% busy) and the cluster has 3; the "
        "bottleneck is this stage's 10 ms per request\n"
        "  hint: give the cluster 2 more CPUs, or aim at 163 req/s, the most it serves")


def test_a_p99_out_of_reach_says_what_the_stages_take() -> None:
    """At 20% busy Inc runs ceil(50 / 20) = 3 replicas, 1/6 busy: 10 ms * ln(100) / (5/6) =
    55.3 ms; double and triple 1 ms at 5% busy, 4.85 ms each, in parallel: one counts; add
    2.36 ms: 55.3 + 4.85 + 2.36 = 62.5 ms."""
    with pytest.raises(sg.CapacityError) as caught:
        sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=16), profile=diamond_profile(),
                   target=sg.Target(rps=50, p99_ms=5))
    assert str(caught.value) == (
        "[capacity] stage 'Inc': 50 req/s, p99 <= 5 ms is out of reach: the stages' p99 is "
        "62.5 ms even at 20% busy; the slowest is this stage's 55.3 ms (10 ms a call, 0 ms "
        "batch wait)\n"
        "  hint: raise p99_ms to 63 or more, or give this stage smaller batches "
        "(max_batch_size, batch_wait_timeout_s)")


def test_the_pipeline_p99_follows_the_heaviest_chain_of_calls() -> None:
    """The diamond's p99 is Inc's, the slower of its two parallel branches', add's and the
    driver's: double and triple wait side by side, so only one of them counts."""
    plan = sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=16), profile=diamond_profile(),
                      target=sg.Target(rps=50))
    assert plan.capacity is not None
    each = {row.stage: row.p99_ms for row in plan.capacity.stages}
    assert set(each) == {"Inc", "double", "triple", "add", "diamond_driver"}
    assert plan.capacity.p99_ms == pytest.approx(
        each["Inc"] + max(each["double"], each["triple"]) + each["add"]
        + each["diamond_driver"])
    assert plan.capacity.p99_ms < sum(each.values())  # not every stage's, summed


def test_planning_misuse_is_a_bind_error() -> None:
    with pytest.raises(sg.BindError, match="target= needs profile="):
        sg.compile(diamond(), target=sg.Target(rps=1))
    with pytest.raises(sg.BindError, match=r"profile= needs an sg\.Profile, got dict"):
        sg.compile(diamond(), profile={})  # type: ignore[arg-type]
    with pytest.raises(sg.CompileError, match="has no stage of this graph"):
        sg.compile(scoring(), profile=diamond_profile())


def test_a_planned_plan_packs_and_validates_against_serve(tmp_path: object) -> None:
    plan = sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=6), profile=diamond_profile(),
                      target=sg.Target(rps=150))
    config = plan.to_serve_config(graph="tests.stages:diamond")
    assert ray_reads(config) == config
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    assert deployments["Inc"]["autoscaling_config"]["max_replicas"] == 6
    assert deployments["Inc"]["ray_actor_options"]["num_cpus"] == 1.0
    again = sg.CompiledPipeline.model_validate_json(plan.model_dump_json())
    assert again.capacity == plan.capacity


def test_explain_shows_the_predictions() -> None:
    plan = sg.compile(split_diamond(), cluster=sg.ClusterSpec(cpus=4),
                      profile=diamond_profile())
    text = plan.explain()
    assert "capacity (planned from a profile for the most throughput on 4 CPUs):" in text
    assert "  Inc                  4 x 1 CPU: 400 req/s, 58% busy, p99 " in text
    assert ("  predicted: 233 req/s at most (the CPUs allow 233); p99 " in text
            and text.rstrip().count("bottleneck: the cluster's CPUs") == 1)
    assert "  layout:" not in text


def test_most_throughput_runs_the_stages_in_the_driver_when_that_serves_more() -> None:
    """The fused layout: every stage in the driver, whose replica does a request's 12.5 ms of
    stage work and its share of Serve's (0.7 * 2.2 ms): 14.04 ms on 1 CPU (71.2 req/s), 10.04
    on 2 (Inc 6 ms: 99.6 req/s). No call leaves the driver, so 4 CPUs allow 4000 / 14.7 =
    272 req/s; 4 replicas of 1 CPU serve 285 (2 of 2: 199), so the CPUs are the bottleneck,
    and 272 beats the split layout's 233. Inc, the heaviest, reserves the driver's CPU."""
    plan = sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=4), profile=diamond_profile())
    assert [s.name for s in plan.fused()] == ["Inc", "double", "triple", "add"]
    assert plan.stage("Inc").fusion == (
        "planned into the driver for throughput: Inc, add, double, triple there serve 272 "
        "req/s, as deployments of their own 233 (no Serve call per stage call)")
    driver = plan.driver.resources
    assert (driver.replicas.start, driver.cpus) == (4, 1.0)
    capacity = plan.capacity
    assert capacity is not None
    assert capacity.capacity_rps == pytest.approx(4000 / 14.7)
    assert capacity.bottleneck == "the cluster's CPUs"
    rows = {row.stage: row for row in capacity.stages}
    assert rows["diamond_driver"].throughput_rps == pytest.approx(4 * 1000 / 14.04)
    assert (rows["diamond_driver"].replicas, rows["diamond_driver"].cpus) == (4, 1)
    assert rows["Inc"].in_driver and rows["Inc"].utilisation == pytest.approx(14.04 / 14.7)
    text = plan.explain()
    assert "  Inc                  in the driver: 285 req/s, 96% busy, p99 " in text
    assert ("  layout: planned into the driver for throughput: Inc, add, double, triple "
            "there serve 272 req/s, as deployments of their own 233") in text


def test_a_target_only_the_fused_layout_reaches_runs_in_the_driver() -> None:
    """100 req/s on 2 CPUs: as deployments of their own the work is 17.2 ms a request, and
    2 CPUs at 80% serve 1600 / 17.2 = 93; in the driver it is 14.7 ms (109 req/s), and
    ceil(100 / (0.8 * 71.2)) = 2 driver replicas of 1 CPU. 50 req/s fits either way: the
    split layout, each stage scaling on its own."""
    plan = sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=2), profile=diamond_profile(),
                      target=sg.Target(rps=100))
    assert [s.name for s in plan.fused()] == ["Inc", "double", "triple", "add"]
    assert plan.stage("Inc").fusion == (
        "planned into the driver: 100 req/s is out of reach with Inc, add, double, triple "
        "as deployments of their own (each stage call a Serve call)")
    assert (plan.driver.resources.replicas.start, plan.driver.resources.cpus) == (2, 1.0)
    config = plan.to_serve_config(graph="tests.stages:diamond")
    assert ray_reads(config) == config
    plan = sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=2), profile=diamond_profile(),
                      target=sg.Target(rps=50))
    assert [s.name for s in plan.fused()] == ["double", "triple", "add"]
    assert plan.capacity is not None and plan.capacity.layout == ""


def test_fusion_off_or_a_fixed_driver_keeps_the_split_layout() -> None:
    profile = diamond_profile()
    plan = sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=4), profile=profile, fuse=False)
    assert plan.fused() == [] and _planned(plan)["Inc"] == (4, 1.0)
    with pytest.raises(sg.CapacityError, match="or aim at 93 req/s"):
        sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=2), profile=profile,
                   target=sg.Target(rps=100), fuse=False)


@sg.deployment(ray_actor_options={"num_gpus": 0.5, "num_cpus": 1})
class GpuModel:
    """Half a GPU a replica, 20 ms a call: 50 req/s a replica."""

    def __call__(self, x: int) -> int:
        return x


def gpu_graph() -> sg.Graph:
    with sg.InputNode() as inp:
        out = GpuModel.bind().__call__.bind(inp)
    return sg.Graph(out, name="gpu")


def gpu_profile() -> sg.Profile:
    return sg.Profile(pipeline="gpu", machine=MACHINE, payloads=4, budget_s=1.0,
                      stages=[_stage("GpuModel.__call__", 4, {1: 20.0})])


def test_gpu_replicas_are_sized_and_packed() -> None:
    """80 req/s at 80% busy: ceil(80 / 40) = 2 replicas of half a GPU: one GPU, packed."""
    plan = sg.compile(gpu_graph(), cluster=sg.ClusterSpec(gpus=1, gpu_memory="24GiB", cpus=8),
                      profile=gpu_profile(), target=sg.Target(rps=80))
    assert _planned(plan) == {"GpuModel": (2, 1.0)}
    assert plan.gpu_layout is not None and plan.gpu_layout.sharing() == [
        ["GpuModel", "GpuModel"]]


def test_a_target_short_of_gpus_says_how_many_more() -> None:
    """100 req/s: ceil(100 / 40) = 3 replicas of half a GPU, 1.5 GPUs: 2, and there is 1."""
    with pytest.raises(sg.CapacityError) as caught:
        sg.compile(gpu_graph(), cluster=sg.ClusterSpec(gpus=1, gpu_memory="24GiB", cpus=8),
                   profile=gpu_profile(), target=sg.Target(rps=100))
    assert str(caught.value) == (
        "[capacity] stage 'GpuModel': 100 req/s needs 2 GPUs and the cluster has 1; the "
        "bottleneck is 3 replicas x 0.5 GPU (one replica serves 50 req/s)\n"
        "  hint: give the cluster 1 more GPU of 24GiB, or aim at 80 req/s, the most it serves")


def probe_profile(batches: dict[int, float]) -> sg.Profile:
    """`BatchProbe.size` (declared max_batch_size=4, a 2 s wait): a request's one call and its
    3-item map, 4 calls; ms per call by batch size on one CPU."""
    return sg.Profile(pipeline="probe", machine=MACHINE, payloads=1, budget_s=1.0,
                      stages=[_stage("BatchProbe.size", 4, batches)])


PROBE_PAYLOAD = {"first": 0, "items": [1, 2, 3]}


def test_a_smaller_batch_cheaper_per_item_is_planned_and_batched_at() -> None:
    """Per item 2.0, 1.3 and 1.4 ms at batches 1, 2 and 4: batch 2 is more than 5% cheaper
    than the largest, so the plan batches at 2 (`BatchProbe` answers each call with its
    batch's size), two batches at once, and every executor batches so."""
    load = model.stage_load("BatchProbe", probe_profile({1: 2.0, 2: 2.6, 4: 5.6}).methods_of(
        "BatchProbe"), 1, {"size": 4}, {"size": 2000.0})
    assert (load.batch, load.batches, load.work(1)) == (
        2, (model.MethodBatch("size", 2, 4.0, 2000.0, 2000.0),), 4 * 1.3)
    plan = sg.compile(batch_probe(), cluster=sg.ClusterSpec(cpus=2),
                      profile=probe_profile({1: 2.0, 2: 2.6, 4: 5.6}))
    batching = plan.stage("BatchProbe").batching["size"]
    assert (batching.max_batch_size, batching.max_concurrent_batches) == (2, 2)
    assert (batching.declared_max_batch_size, batching.declared_max_concurrent_batches) == (4, 1)
    # the wait: the one call more a batch of 2 needs, at 270 req/s x 4 calls on 2 replicas
    assert plan.capacity is not None and round(plan.capacity.at_rps, 2) == 270.27
    assert batching.batch_wait_timeout_s == pytest.approx(1 / (270.27 * 4 / 2), abs=1e-5)
    assert ("batch size <= 2, 2 at once (planned; declared 4, 1 at once) within 1.85 ms "
            "(planned; declared 2000 ms)" in plan.explain())
    assert sg.LocalExecutor(plan).call(PROBE_PAYLOAD) == {"one": 2, "sizes": [2, 2, 2]}
    assert sg.LocalExecutor(batch_probe()).call(PROBE_PAYLOAD) == {"one": 4, "sizes": [4, 4, 4]}
    # within 5% the largest batch stays (and two run at once)
    plan = sg.compile(batch_probe(), cluster=sg.ClusterSpec(cpus=2),
                      profile=probe_profile({1: 2.0, 2: 2.8, 4: 5.6}))
    batching = plan.stage("BatchProbe").batching["size"]
    assert (batching.max_batch_size, batching.max_concurrent_batches) == (4, 2)
    assert sg.LocalExecutor(plan).call(PROBE_PAYLOAD) == {"one": 4, "sizes": [4, 4, 4]}


def test_a_p99_only_smaller_batches_meet_plans_them() -> None:
    """The batch wait is planned: a batch of n waits no longer than its n - 1 calls take to
    arrive at the target (10 req/s, 4 calls a request: 40 a second), not the declared 2 s.
    At batches of 4 that is 75 ms, and 75 + 5 ms x ln(100) / 0.95 = 99.2 ms is over a p99
    of 90; at batches of 2, 25 + 3 x ln(100) / 0.94 = 39.7 ms meets it. A p99 of 20 ms is
    met only at batches of 1, which wait for nothing (2 x ln(100) / 0.92 = 10 ms)."""
    plan = sg.compile(batch_probe(), cluster=sg.ClusterSpec(cpus=2),
                      profile=probe_profile({1: 2.0, 2: 3.0, 4: 5.0}),
                      target=sg.Target(rps=10, p99_ms=90))
    batching = plan.stage("BatchProbe").batching["size"]
    assert (batching.max_batch_size, batching.declared_max_batch_size) == (2, 4)
    assert (batching.batch_wait_timeout_s, batching.declared_batch_wait_timeout_s) == (
        0.025, 2.0)
    assert plan.capacity is not None
    assert round(plan.capacity.stages[0].p99_ms, 1) == 39.7
    assert "within 25 ms (planned; declared 2000 ms)" in plan.explain()
    assert sg.LocalExecutor(plan).call(PROBE_PAYLOAD) == {"one": 2, "sizes": [2, 2, 2]}
    plan = sg.compile(batch_probe(), cluster=sg.ClusterSpec(cpus=2),
                      profile=probe_profile({1: 2.0, 2: 3.0, 4: 5.0}),
                      target=sg.Target(rps=10, p99_ms=20))
    batching = plan.stage("BatchProbe").batching["size"]
    assert (batching.max_batch_size, batching.declared_max_batch_size) == (1, 4)
    assert plan.capacity is not None and round(plan.capacity.stages[0].p99_ms, 1) == 10.0
    assert sg.LocalExecutor(plan).call(PROBE_PAYLOAD) == {"one": 1, "sizes": [1, 1, 1]}
    with pytest.raises(sg.CapacityError, match="is out of reach"):
        sg.compile(batch_probe(), cluster=sg.ClusterSpec(cpus=2),
                   profile=probe_profile({1: 2.0, 2: 3.0, 4: 5.0}),
                   target=sg.Target(rps=10, p99_ms=5))


def test_a_batch_waits_no_longer_than_its_batch_takes_to_arrive() -> None:
    """`MethodBatch.planned_wait`: the declared wait, cut to the time the batch's other calls
    take to arrive at one replica at the planned load (a longer wait fills no larger batch
    there), never lengthened; computed from the declared wait each time."""
    batch = model.MethodBatch("encode", 32, 17.0, 5.0, 5.0)
    # 20 req/s x 17 calls on 2 replicas: 170 calls a second each, 31 more take 182 ms
    assert batch.planned_wait(20, 2).wait_ms == 5.0
    # 2,000 req/s: 17,000 calls a second each, 31 more in 1.824 ms
    shorter = batch.planned_wait(2000, 2)
    assert shorter.wait_ms == 1.824 and shorter.declared_ms == 5.0
    assert shorter.planned_wait(20, 2).wait_ms == 5.0
    load = model.StageLoad("s", 17.0, (10.0,), (10.0,), batch=32,
                           batches=(batch,))
    assert load.waiting(2000, 2).wait_ms == 1.824

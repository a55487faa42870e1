"""The resources and pack passes: GPU fractions derived from memory, the GPU layout, the
errors that say what would fit, and cluster specs from Python and from CLI flags."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import servegraph as sg
from servegraph import testing as sgt
from servegraph.compiler.passes.pack import Bin, Demand, pack
from servegraph.compiler.plan import Headroom, ReplicaRange, StageResources
from servegraph.dag.deployment import spec_of
from tests import gpu_graphs, sites

GiB = 2**30


def at(code: str) -> str:
    return sites.at(__file__, code)


@sg.deployment(num_replicas=2, gpu_memory="30GiB")
class Big:
    def __call__(self, x: int) -> int:
        return x


@sg.deployment(num_replicas=3, gpu_memory="20GiB")
class Mid:
    def __call__(self, x: int) -> int:
        return x


@sg.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 4},
               ray_actor_options={"num_gpus": 0.25})
class Scaled:
    def __call__(self, x: int) -> int:
        return x


@sg.deployment(ray_actor_options={"num_cpus": 0.5})
def post(x: int) -> int:
    return x


def chain(*stages: Any, name: str = "g") -> sg.Graph:
    """inp -> each stage in turn (a class stage is bound, then called)."""
    with sg.InputNode() as inp:
        value = inp
        for stage in stages:
            spec = spec_of(stage)
            value = stage.bind(value) if spec.is_function else stage.bind().__call__.bind(value)
    return sg.Graph(value, name=name)


def mixed() -> sg.Graph:
    with sg.InputNode() as inp:
        out = post.bind(Scaled.bind().__call__.bind(Mid.bind().__call__.bind(
            Big.bind().__call__.bind(inp))))
    return sg.Graph(out, name="mixed")


def test_fractions_are_derived_from_memory_on_a_grid_and_packed_best_fit() -> None:
    plan = sg.compile(mixed(), cluster=sg.ClusterSpec(gpus=2, gpu_memory="80GiB"))
    assert plan.stage("Big").options["ray_actor_options"] == {"num_gpus": 0.38}  # 30/80 up
    assert plan.stage("Mid").options["ray_actor_options"] == {"num_gpus": 0.25}
    assert plan.stage("Scaled").options["ray_actor_options"] == {"num_gpus": 0.25}
    assert plan.stage("post").options["ray_actor_options"] == {"num_cpus": 0.5}
    assert plan.driver.options["ray_actor_options"] == {"num_cpus": 0.5}  # post runs there
    layout = plan.gpu_layout
    assert layout is not None and layout.bounded and layout.used == 2
    assert layout.lower_bound == 2
    assert layout.sharing() == [["Big", "Big"], ["Mid", "Mid", "Mid", "Scaled"]]
    assert [gpu.fraction_used for gpu in layout.gpus] == [0.76, 1.0]
    assert [gpu.memory_used for gpu in layout.gpus] == [60 * GiB, 80 * GiB]
    assert [(h.stage, h.placed, h.max_replicas, h.fits) for h in layout.headroom] == [
        ("Scaled", 1, 4, 0)]
    assert plan.explain() == "\n".join([
        "pipeline 'mixed': 5 nodes, 3 stage deployments + driver (1 fused into the driver); "
        "passes: validate, typecheck, resources, pack, fuse, lower",
        "cluster: node0: 2 x 80GiB GPU",
        "deployments:",
        "  Big                  class    2 replicas, 1 CPU, 0.38 GPU (from gpu_memory 30GiB of "
        "80GiB)",
        "  Mid                  class    3 replicas, 1 CPU, 0.25 GPU (from gpu_memory 20GiB of "
        "80GiB)",
        "  Scaled               class    autoscaling 1..4, 1 at start, 1 CPU, 0.25 GPU "
        "(declared)",
        "  mixed_driver         driver   1 replica, 0.5 CPU, max_ongoing_requests=1000, runs post "
        "in-process",
        "fusion:",
        "  Big                  own deployment: needs a GPU (0.38): never fused across a GPU "
        "boundary",
        "  Mid                  own deployment: needs a GPU (0.25): never fused across a GPU "
        "boundary",
        "  Scaled               own deployment: needs a GPU (0.25): never fused across a GPU "
        "boundary",
        "  post                 fused into mixed_driver: light CPU stage",
        "GPU layout on the cluster: 2 GPUs used, lower bound 2",
        "  node0 GPU 0: 76%, 60GiB of 80GiB: Big#0 0.38, Big#1 0.38",
        "  node0 GPU 1: 100%, 80GiB of 80GiB: Mid#0 0.25, Mid#1 0.25, Mid#2 0.25, Scaled#0 0.25",
        "  headroom: Scaled starts 1, may scale to 4; 0 more fit on the GPUs left (the rest "
        "would stay pending)",
    ])


def test_the_plan_with_its_layout_round_trips_through_json() -> None:
    plan = sg.compile(mixed(), cluster=sg.ClusterSpec(gpus=3, gpu_memory="80GiB"))
    again = sg.CompiledPipeline.model_validate_json(plan.model_dump_json())
    assert again.gpu_layout == plan.gpu_layout
    assert again.cluster == plan.cluster
    assert again.explain() == plan.explain()
    assert [(h.stage, h.fits) for h in plan.gpu_layout.headroom] == [("Scaled", 3)]


def test_an_auto_stage_scales_to_serves_default_max_in_every_line_of_explain() -> None:
    """num_replicas="auto" with only target_ongoing_requests: Serve lays it over
    AutoscalingConfig.default(), so 1..100 replicas. The plan keeps the user's options as
    given (nothing invented) and the numbers in its typed facts; explain's deployment line and
    the packer's headroom read the same facts."""
    plan = sg.compile(gpu_graphs.auto, cluster=sg.ClusterSpec(gpus=2, gpu_memory="80GiB"))
    stage = plan.stage("AutoEmbedder")
    assert stage.options == {"name": "AutoEmbedder", "num_replicas": "auto",
                             "autoscaling_config": {"target_ongoing_requests": 2.0},
                             "ray_actor_options": {"num_gpus": 0.25}}
    assert stage.resources == StageResources(
        replicas=ReplicaRange(start=1, min=1, max=100, autoscaling=True), cpus=1.0, gpus=0.25,
        gpu_memory=20 * GiB, gpus_from_memory=True)
    assert plan.gpu_layout.headroom == [
        Headroom(stage="AutoEmbedder", placed=1, max_replicas=100, fits=7)]
    assert plan.explain() == "\n".join([
        "pipeline 'auto': 4 nodes, 2 stage deployments + driver; passes: validate, typecheck, "
        "resources, pack, fuse, lower",
        "cluster: node0: 2 x 80GiB GPU",
        "deployments:",
        "  tokenize             function 2 replicas, 1 CPU",
        "  AutoEmbedder         class    autoscaling 1..100, 1 at start, 1 CPU, 0.25 GPU (from "
        "gpu_memory 20GiB of 80GiB)",
        "  auto_driver          driver   1 replica, 0 CPU, max_ongoing_requests=1000",
        "fusion:",
        "  tokenize             own deployment: num_replicas=2: scales on its own",
        "  AutoEmbedder         own deployment: needs a GPU (0.25): never fused across a GPU "
        "boundary",
        "GPU layout on the cluster: 1 GPU used, lower bound 1",
        "  node0 GPU 0: 25%, 20GiB of 80GiB: AutoEmbedder#0 0.25",
        "  node0 GPU 1: 0%, 0B of 80GiB: free",
        "  headroom: AutoEmbedder starts 1, may scale to 100; 7 more fit on the GPUs left (the "
        "rest would stay pending)",
    ])


class CpuEmbedder:
    def embed(self, tokens: list[str]) -> list[float]:
        return [0.0 for _ in tokens]


def test_a_stand_in_drops_the_gpu_facts_with_the_gpu_request() -> None:
    plan = sg.compile(gpu_graphs.auto, cluster=sg.ClusterSpec(gpus=2, gpu_memory="80GiB"))
    fake = sgt.override(plan, {gpu_graphs.AutoEmbedder: CpuEmbedder})
    assert fake.stage("AutoEmbedder").resources == StageResources(
        replicas=ReplicaRange(start=1, min=1, max=100, autoscaling=True), cpus=1.0)
    assert "ray_actor_options" not in fake.stage("AutoEmbedder").options


def test_too_few_gpus_says_how_many_it_would_need() -> None:
    with pytest.raises(sg.PackingError) as caught:
        sg.compile(mixed(), cluster=sg.ClusterSpec(gpus=1, gpu_memory="80GiB"))
    assert str(caught.value) == (
        "[pack] stage 'Mid': cannot place 4 GPU replica(s) (Mid x3, Scaled x1) on the cluster "
        "(node0: 1 x 80GiB GPU): the plan needs 2 GPUs of 80GiB, the cluster has 1\n"
        "  hint: give the cluster 2 GPUs of 80GiB (--gpus 2x80GiB), or lower num_replicas, "
        "num_gpus or gpu_memory")
    assert isinstance(caught.value, sg.CompileError)


def test_a_declared_fraction_whose_memory_does_not_fit_names_both_stages() -> None:
    @sg.deployment(ray_actor_options={"num_gpus": 0.25}, gpu_memory="40GiB")
    class Greedy:
        def __call__(self, x: int) -> int:
            return x

    @sg.deployment(ray_actor_options={"num_gpus": 0.75}, gpu_memory="60GiB")
    class Honest:
        def __call__(self, x: int) -> int:
            return x

    with sg.InputNode() as inp:
        out = Honest.bind().__call__.bind(Greedy.bind().__call__.bind(inp))
    with pytest.raises(sg.PackingError) as caught:
        sg.compile(sg.Graph(out), cluster=sg.ClusterSpec(gpus=1, gpu_memory="80GiB"))
    error = caught.value
    assert error.stage == "Greedy"
    assert error.message == (
        "num_gpus=0.25 with gpu_memory=40GiB does not fit beside stage 'Honest' "
        "(num_gpus=0.75, 60GiB): together they need 100GiB on node0 GPU 0 (80GiB)")
    assert error.hint == ("raise num_gpus of 'Greedy' to at least 0.5, or drop num_gpus and "
                          "let gpu_memory derive it")
    assert error.site == at('@sg.deployment(ray_actor_options={"num_gpus": 0.25}, '
                            'gpu_memory="40GiB")')


def test_without_a_cluster_spec_a_gpu_memory_fraction_is_unknown_until_placed() -> None:
    """Compiling, running in-process and explaining need no cluster spec; what places
    replicas on GPUs (serving, the Serve config, the RayService) fails naming the stage."""
    plan = sg.compile(mixed())
    assert [stage.resources.gpus for stage in plan.deployments] == [None, None, 0.25, 0.0]
    assert plan.stage("Big").resources.gpus_from_memory
    assert plan.stage("Big").resources.uses_gpu
    assert "num_gpus" not in plan.stage("Big").options.get("ray_actor_options", {})
    assert plan.stage("Big").fusion == ("needs a GPU (fraction unknown): never fused across a "
                                        "GPU boundary")
    layout = plan.gpu_layout  # the GPUs counted leave the unknown fractions out
    assert layout is not None and not layout.bounded and layout.sharing() == [["Scaled"]]
    assert sg.CompiledPipeline.model_validate_json(plan.model_dump_json()) == plan
    explained = plan.explain().splitlines()
    assert explained[2] == ("  Big                  class    2 replicas, 1 CPU, GPU fraction "
                            "unknown (gpu_memory 30GiB: serving needs a cluster spec)")
    assert explained[-3:] == [
        "GPU fractions unknown without a cluster spec: Big, Mid (the GPUs below leave them out)",
        "GPU layout (no cluster spec: GPUs counted as needed): 1 GPU used, lower bound 1",
        "  gpu0 GPU 0: 25%: Scaled#0 0.25"]
    assert sg.run_local(mixed(), 3) == 3
    for place, step in ((lambda: plan.to_serve_config(graph="tests:mixed"), "serve-config"),
                        (lambda: plan.to_rayservice(graph="tests:mixed"), "rayservice"),
                        (lambda: sg.serve(mixed()), "serve")):
        with pytest.raises(sg.CompileError) as caught:
            place()
        assert (caught.value.pass_name, caught.value.stage) == (step, "Big")
        assert caught.value.site == at('@sg.deployment(num_replicas=2, gpu_memory="30GiB")')
        assert caught.value.message == ("gpu_memory=30GiB needs the GPUs' memory size to "
                                        "derive a GPU fraction, and no cluster spec was given")
        assert caught.value.hint == (
            "placing replicas on GPUs needs their size: sg.compile(graph, cluster="
            "sg.ClusterSpec(gpus=2, gpu_memory='80GiB')) or sg.serve(graph, cluster=...) (CLI: "
            "--gpus 2x80GiB), or declare ray_actor_options={'num_gpus': 0.25}; running "
            "in-process (sg.run_local, servegraph run --local) and tests that fake the stage "
            "need neither")


def test_gpu_memory_needs_a_gpu_size_in_the_cluster_spec() -> None:
    with pytest.raises(sg.CompileError) as caught:
        sg.compile(mixed(), cluster=sg.ClusterSpec(gpus=2))  # as detected from Ray
    assert caught.value.message.endswith("and the cluster spec does not give it")
    assert caught.value.hint == (
        "give the GPUs' memory: sg.ClusterSpec(gpus=2, gpu_memory='80GiB') or "
        "sg.detect_cluster(gpu_memory='80GiB') (CLI: --gpus 2x80GiB, or --detect-cluster "
        "--gpu-memory 80GiB; Ray counts GPUs but not their memory), or declare "
        "ray_actor_options={'num_gpus': 0.25}")


def test_more_memory_than_one_gpu_holds() -> None:
    @sg.deployment(gpu_memory="100GiB")
    class Huge:
        def __call__(self, x: int) -> int:
            return x

    @sg.deployment(gpu_memory="100GiB", ray_actor_options={"num_gpus": 1})
    class TooFew:
        def __call__(self, x: int) -> int:
            return x

    spec = sg.ClusterSpec(gpus=2, gpu_memory="80GiB")
    with pytest.raises(sg.CompileError) as caught:
        sg.compile(chain(Huge), cluster=spec)
    assert caught.value.message == ("gpu_memory=100GiB is more than one GPU holds (80GiB, the "
                                    "smallest in the cluster spec)")
    with pytest.raises(sg.CompileError) as caught:
        sg.compile(chain(TooFew), cluster=spec)
    assert caught.value.message == "gpu_memory=100GiB does not fit on num_gpus=1 GPU of 80GiB"
    assert caught.value.hint == "raise num_gpus to 2 or lower gpu_memory"


def test_whole_gpu_replicas_take_free_gpus_on_one_node() -> None:
    @sg.deployment(num_replicas=2, ray_actor_options={"num_gpus": 2})
    class Sharded:
        def __call__(self, x: int) -> int:
            return x

    two_by_two = sg.ClusterSpec(nodes=[sg.NodeSpec(gpus=2), sg.NodeSpec(gpus=2)],
                                gpu_memory="24GiB")
    plan = sg.compile(chain(Sharded), cluster=two_by_two)
    assert [(g.node, g.index, [r.replica for r in g.replicas]) for g in plan.gpu_layout.gpus] \
        == [("node0", 0, [0]), ("node0", 1, [0]), ("node1", 0, [1]), ("node1", 1, [1])]
    four_by_one = sg.ClusterSpec(nodes=[sg.NodeSpec(gpus=1) for _ in range(4)],
                                 gpu_memory="24GiB")
    with pytest.raises(sg.PackingError) as caught:
        sg.compile(chain(Sharded), cluster=four_by_one)
    assert caught.value.message.endswith(
        "the plan needs 4 GPUs of 24GiB (nodes of 2), the cluster has 4, and a replica needs "
        "2 GPUs on one node")


def test_without_a_cluster_the_layout_counts_the_gpus_needed() -> None:
    @sg.deployment(num_replicas=3, ray_actor_options={"num_gpus": 0.5})
    class Half:
        def __call__(self, x: int) -> int:
            return x

    plan = sg.compile(chain(Half))
    assert not plan.gpu_layout.bounded
    assert plan.gpu_layout.sharing() == [["Half", "Half"], ["Half"]]
    assert plan.gpu_layout.lower_bound == 2
    assert sg.compile(chain(post)).gpu_layout is None


def test_cpus_of_the_cluster_are_checked() -> None:
    with pytest.raises(sg.PackingError) as caught:
        sg.compile(mixed(), cluster=sg.ClusterSpec(gpus=2, gpu_memory="80GiB", cpus=4))
    assert caught.value.message == (
        "the replicas need 6.5 CPUs (Big 2 x 1, Mid 3 x 1, Scaled 1 x 1, post 1 x 0.5), "
        "the cluster has 4")


def test_cluster_specs_from_cli_flags() -> None:
    assert sg.ClusterSpec.parse(gpus="4x80GiB") == sg.ClusterSpec(gpus=4, gpu_memory="80GiB")
    spec = sg.ClusterSpec.parse(nodes=2, gpus_per_node=8, gpu_memory="40GiB", cpus=32)
    assert [(n.name, n.gpus, n.gpu_memory, n.cpus) for n in spec.nodes] == [
        ("node0", 8, 40 * GiB, 32), ("node1", 8, 40 * GiB, 32)]
    assert spec.gpus == 16 and spec.cpus == 64
    assert sg.ClusterSpec.parse(gpus="8x24GiB", nodes=2).nodes[1].gpus == 4
    for flags, message in [
        ({"gpus": "lots"}, "cannot read --gpus 'lots'; write e.g. 4x80GiB or 4"),
        ({"gpus": "3", "nodes": 2}, "3 GPUs do not split evenly over 2 nodes; give "
                                    "--gpus-per-node"),
        ({"gpus": "2x80GiB", "gpu_memory": "40GiB"}, "--gpus 2x80GiB disagrees with "
                                                     "--gpu-memory 40GiB"),
    ]:
        with pytest.raises(ValueError) as caught:
            sg.ClusterSpec.parse(**flags)
        assert str(caught.value) == message
    with pytest.raises(ValueError, match="disagrees with the nodes' GPUs"):
        sg.ClusterSpec(gpus=3, nodes=[sg.NodeSpec(gpus=2)])


def test_the_cluster_spec_shows_every_keyword_it_takes() -> None:
    """Editors and `help()` offer the shorthand too; the data is still its nodes alone."""
    parameters = inspect.signature(sg.ClusterSpec).parameters
    assert list(parameters) == ["gpus", "gpu_memory", "cpus", "nodes"]
    assert {p.kind for p in parameters.values()} == {inspect.Parameter.KEYWORD_ONLY}
    spec = sg.ClusterSpec(gpus=2, gpu_memory="16GiB", cpus=8)
    assert list(sg.ClusterSpec.model_fields) == ["nodes"]
    assert spec.model_dump() == {"nodes": [{"name": "node0", "gpus": 2, "gpu_memory": 16 * GiB,
                                            "cpus": 8.0, "labels": {}}]}
    assert sg.ClusterSpec.model_validate_json(spec.model_dump_json()) == spec == \
        sg.ClusterSpec(nodes=[sg.NodeSpec(gpus=2, cpus=8)], gpu_memory=16 * GiB)
    with pytest.raises(ValueError, match="gpu\n  Extra inputs are not permitted"):
        sg.ClusterSpec(gpus=2, gpu=2)


def test_pack_mimics_rays_best_fit() -> None:
    """Ray gives a fraction the GPU with the least room that still fits, lowest index first."""
    bins = [Bin("n", 0, None, free=5000), Bin("n", 1, None, free=3000), Bin("n", 2, None)]
    left = pack([Demand("a", 0, 2500), Demand("b", 0, 6000)], bins)
    assert left == []
    assert [(b.index, b.free) for b in bins] == [(0, 5000), (1, 500), (2, 4000)]

"""KubeRay RayService output: checked against KubeRay's own CRD schema, and sized exactly from
the GPU layout and the CPU stages' replicas."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import servegraph as sg
from servegraph.compiler.emit.rayservice import PINNED_RAY_VERSION, k8s_name, rayservice
from tests import gpu_graphs

ROOT = str(Path(__file__).resolve().parents[3])
CRD = os.path.join(ROOT, "..", "shared", "reference", "kuberay-rayservice-crd.yaml")

NodeSpec = sg.NodeSpec
TWO_BY_TWO = sg.ClusterSpec(nodes=[NodeSpec(gpus=2), NodeSpec(gpus=2)], gpu_memory="24GiB")


@pytest.fixture(scope="module")
def validator() -> Any:
    """A validator for the served `v1` RayService schema of KubeRay's CRD."""
    jsonschema = pytest.importorskip("jsonschema")
    if not os.path.exists(CRD):
        pytest.skip(f"KubeRay's RayService CRD is not at {os.path.normpath(CRD)}")
    with open(CRD) as file:
        crd = yaml.load(file, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["served"]]
    schema = version["schema"]["openAPIV3Schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def errors(validator: Any, manifest: dict[str, Any]) -> list[str]:
    return sorted(f"{list(e.absolute_path)}: {e.message}"
                  for e in validator.iter_errors(manifest))


def container(group: dict[str, Any]) -> dict[str, Any]:
    (only,) = group["template"]["spec"]["containers"]
    return only


def worker(name: str, image: str, *, replicas: int, most: int | None = None, cpus: str,
           memory: str, gpus: str | None = None) -> dict[str, Any]:
    """The worker group spec rayservice() writes."""
    limits = {"cpu": cpus, "memory": memory} | ({"nvidia.com/gpu": gpus} if gpus else {})
    return {
        "groupName": name, "replicas": replicas, "minReplicas": replicas,
        "maxReplicas": replicas if most is None else most, "rayStartParams": {},
        "template": {"spec": {"containers": [{
            "name": "ray-worker", "image": image,
            "resources": {"limits": limits, "requests": {"cpu": cpus, "memory": memory}},
        }]}},
    }


GPU_IMAGE = "rayproject/ray:2.60.0-py311-gpu"
CPU_IMAGE = "rayproject/ray:2.60.0-py311"


def test_manifests_validate_against_the_crd(validator: Any) -> None:
    plans = [
        sg.compile(gpu_graphs.rag, cluster=TWO_BY_TWO),
        sg.compile(gpu_graphs.scaled, cluster=sg.ClusterSpec(
            nodes=[NodeSpec(gpus=2, cpus=8) for _ in range(3)], gpu_memory="24GiB")),
        sg.compile(gpu_graphs.caption),
        sg.compile(gpu_graphs.words),
    ]
    for plan in plans:
        manifest = plan.to_rayservice(ray_version="2.60.0", namespace="serving",
                                      runtime_env={"pip": ["servegraph"]})
        assert errors(validator, manifest) == []
        assert errors(validator, yaml.safe_load(yaml.safe_dump(manifest))) == []


def test_validation_rejects_broken_manifests(validator: Any) -> None:
    manifest = sg.compile(gpu_graphs.rag, cluster=TWO_BY_TWO).to_rayservice(ray_version="2.60.0")

    no_group_name = copy.deepcopy(manifest)
    del no_group_name["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["groupName"]
    assert errors(validator, no_group_name) == [
        "['spec', 'rayClusterConfig', 'workerGroupSpecs', 0]: 'groupName' is a required property"]

    replicas_as_text = copy.deepcopy(manifest)
    replicas_as_text["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["replicas"] = "2"
    assert errors(validator, replicas_as_text) == [
        "['spec', 'rayClusterConfig', 'workerGroupSpecs', 1, 'replicas']: "
        "'2' is not of type 'integer'"]

    number_param = copy.deepcopy(manifest)
    number_param["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert errors(validator, number_param) == [
        "['spec', 'rayClusterConfig', 'headGroupSpec', 'rayStartParams', 'num-cpus']: "
        "0 is not of type 'string'"]

    config_as_dict = copy.deepcopy(manifest)
    config_as_dict["spec"]["serveConfigV2"] = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert [(list(e.absolute_path), e.validator, e.validator_value)
            for e in validator.iter_errors(config_as_dict)] == [
        (["spec", "serveConfigV2"], "type", "string")]


def test_gpu_pods_follow_the_packing() -> None:
    """2 nodes x 2 GPUs; the layout uses 3 GPUs (two whole Reranker GPUs on node0, both
    Embedder replicas on one GPU of node1): a pod asks for the GPUs the plan uses on its node,
    so a 2-GPU pod and a 1-GPU pod. CPU stages: tokenize 2 x 1 CPU and top_hits 3 x 2 CPUs
    fill two 4-CPU pods."""
    plan = sg.compile(gpu_graphs.rag, cluster=TWO_BY_TWO)
    assert plan.gpu_layout is not None and plan.gpu_layout.used == 3
    manifest = rayservice(plan, ray_version="2.60.0")
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["workerGroupSpecs"] == [
        worker("gpu-2x24gib", GPU_IMAGE, replicas=1, cpus="2", memory="8Gi", gpus="2"),
        worker("gpu-1x24gib", GPU_IMAGE, replicas=1, cpus="2", memory="8Gi", gpus="1"),
        worker("cpu", CPU_IMAGE, replicas=2, cpus="4", memory="16Gi"),
    ]
    assert "enableInTreeAutoscaling" not in cluster


def test_a_pod_asks_for_the_gpus_the_plan_uses_not_the_whole_node() -> None:
    """One node of 2 GPUs; both Embedder replicas (0.42 each) share one: a 1-GPU pod."""
    plan = sg.compile(gpu_graphs.embed, cluster=sg.ClusterSpec(gpus=2, gpu_memory="24GiB"))
    assert plan.gpu_layout is not None and plan.gpu_layout.used == 1
    groups = rayservice(plan, ray_version="2.60.0")["spec"]["rayClusterConfig"][
        "workerGroupSpecs"]
    assert groups[0] == worker("gpu-1x24gib", GPU_IMAGE, replicas=1, cpus="2", memory="8Gi",
                               gpus="1")


def test_pods_keep_their_nodes_gpus_where_smaller_ones_would_strand_a_replica() -> None:
    """On nodes of 4, 2, 3 and 4 GPUs the plan puts wide#0 (2 GPUs) on node1 and the slim
    pair on node2; autoscaling's extras fill node2 and node0 and take two GPUs of node3. Ray,
    placing onto pods of only the GPUs used (4, 2, 3, 2), would send the slim pair to the
    2-GPU node3 and find no room for the last wide replica: so every pod asks for its whole
    node."""
    cluster = sg.ClusterSpec(nodes=[NodeSpec(gpus=n) for n in (4, 2, 3, 4)],
                             gpu_memory="24GiB")
    plan = sg.compile(gpu_graphs.spread, cluster=cluster)
    assert [(g.node, [r.stage for r in g.replicas]) for g in plan.gpu_layout.gpus
            if g.replicas] == [("node1", ["wide"]), ("node1", ["wide"]),
                               ("node2", ["slim", "slim"])]
    groups = rayservice(plan, ray_version="2.60.0")["spec"]["rayClusterConfig"][
        "workerGroupSpecs"]
    assert [(g["groupName"], g["replicas"], g["maxReplicas"],
             container(g)["resources"]["limits"]["nvidia.com/gpu"]) for g in groups[:3]] == [
        ("gpu-4x24gib", 0, 2, "4"), ("gpu-2x24gib", 1, 1, "2"), ("gpu-3x24gib", 1, 1, "3")]


def test_unused_nodes_get_no_pod_and_node_shapes_get_their_own_group() -> None:
    """Reranker's GPUs go to the 48 GiB node and node1, the Embedders share node1's other GPU;
    node2 stays empty. A pod's CPUs: what its replicas reserve, or the node's own `cpus`."""
    cluster = sg.ClusterSpec(
        nodes=[NodeSpec(gpus=1, gpu_memory="48GiB", labels={"tier": "big"}),
               NodeSpec(gpus=2, cpus=6), NodeSpec(gpus=2, cpus=6)],
        gpu_memory="24GiB")
    groups = rayservice(sg.compile(gpu_graphs.rag, cluster=cluster),
                        ray_version="2.60.0")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    big = worker("gpu-1x48gib", GPU_IMAGE, replicas=1, cpus="1", memory="4Gi", gpus="1")
    big = {**big, "labels": {"tier": "big"}} | {"template": big["template"]}
    assert groups == [
        big,
        worker("gpu-2x24gib", GPU_IMAGE, replicas=1, cpus="6", memory="24Gi", gpus="2"),
        worker("cpu", CPU_IMAGE, replicas=2, cpus="4", memory="16Gi"),
    ]
    assert list(groups[0]) == ["groupName", "replicas", "minReplicas", "maxReplicas",
                               "rayStartParams", "labels", "template"]


def test_same_shape_twice_gets_distinct_group_names() -> None:
    cluster = sg.ClusterSpec(nodes=[NodeSpec(gpus=1, labels={"zone": zone}) for zone in "abb"],
                             gpu_memory="24GiB")
    groups = rayservice(sg.compile(gpu_graphs.rag, cluster=cluster),
                        ray_version="2.60.0")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [(g["groupName"], g["replicas"], g["labels"]) for g in groups[:2]] == [
        ("gpu-1x24gib", 1, {"zone": "a"}), ("gpu-1x24gib-2", 2, {"zone": "b"})]


def test_without_a_cluster_spec_pods_hold_one_gpu_or_one_whole_gpu_replica() -> None:
    """Unbounded layout: Generator's 2 GPUs are one pod; the Rerankers' whole GPUs and the two
    GPUs the three half-GPU Captioners share are 1-GPU pods (the fullest reserves 2 CPUs)."""
    plan = sg.compile(gpu_graphs.caption)
    assert plan.gpu_layout is not None and not plan.gpu_layout.bounded
    groups = rayservice(plan, ray_version="2.60.0")["spec"]["rayClusterConfig"][
        "workerGroupSpecs"]
    assert groups == [
        worker("gpu-1", GPU_IMAGE, replicas=4, cpus="2", memory="8Gi", gpus="1"),
        worker("gpu-2", GPU_IMAGE, replicas=1, cpus="4", memory="16Gi", gpus="2"),
    ]


def test_autoscaled_stages_size_max_replicas_and_turn_on_the_autoscaler() -> None:
    """ScaledEmbedder starts 2 replicas on node1 and may reach 6: the 4 more take node1's
    other GPU and one of node2's, so 3 GPU pods at most (node2's a pod of 1 GPU, added only
    as Serve scales up). `join` scales 1..8 CPU replicas: 3 CPU pods (with tokenize's 2) at
    most, 1 at start."""
    cluster = sg.ClusterSpec(nodes=[NodeSpec(gpus=2, cpus=8) for _ in range(3)],
                             gpu_memory="24GiB")
    plan = sg.compile(gpu_graphs.scaled, cluster=cluster)
    assert [(h.stage, h.placed, h.max_replicas, h.fits) for h in plan.gpu_layout.headroom] == [
        ("ScaledEmbedder", 2, 6, 4)]
    spec = rayservice(plan, ray_version="2.60.0")["spec"]["rayClusterConfig"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["workerGroupSpecs"] == [
        worker("gpu-2x24gib", GPU_IMAGE, replicas=2, cpus="8", memory="32Gi", gpus="2"),
        worker("gpu-1x24gib", GPU_IMAGE, replicas=0, most=1, cpus="8", memory="32Gi",
               gpus="1"),
        worker("cpu", CPU_IMAGE, replicas=1, most=3, cpus="4", memory="16Gi"),
    ]


def test_an_auto_stage_may_grow_to_serves_default_max() -> None:
    """AutoEmbedder (num_replicas="auto", 0.25 of a GPU) starts 1 replica and Serve may run
    100: on four one-GPU nodes it may fill all four, so the GPU group grows from 1 pod to 4;
    tokenize's 2 replicas take one CPU pod."""
    cluster = sg.ClusterSpec(nodes=[NodeSpec(gpus=1, cpus=4) for _ in range(4)],
                             gpu_memory="80GiB")
    spec = rayservice(sg.compile(gpu_graphs.auto, cluster=cluster),
                      ray_version="2.60.0")["spec"]["rayClusterConfig"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["workerGroupSpecs"] == [
        worker("gpu-1x80gib", GPU_IMAGE, replicas=1, most=4, cpus="4", memory="16Gi", gpus="1"),
        worker("cpu", CPU_IMAGE, replicas=1, cpus="4", memory="16Gi"),
    ]


def test_max_replicas_stop_at_the_cluster_spec() -> None:
    """On two nodes the 4 extra ScaledEmbedders fit on node1's other GPU only partly; the rest
    would stay pending, and the group never asks for a third node."""
    cluster = sg.ClusterSpec(nodes=[NodeSpec(gpus=2), NodeSpec(gpus=2)], gpu_memory="24GiB")
    spec = rayservice(sg.compile(gpu_graphs.scaled, cluster=cluster),
                      ray_version="2.60.0")["spec"]["rayClusterConfig"]
    (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"].startswith("gpu")]
    assert (gpu["replicas"], gpu["minReplicas"], gpu["maxReplicas"]) == (2, 2, 2)
    assert container(gpu)["resources"]["limits"]["cpu"] == "4"  # node1 at most: 4 replicas


def test_cpu_only_pipeline_has_no_gpu_group_and_a_cpu_only_head() -> None:
    manifest = rayservice(sg.compile(gpu_graphs.words), ray_version="2.60.0", worker_cpus=2,
                          memory_per_cpu="3GiB", head_cpus=1, head_memory="2GiB")
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["workerGroupSpecs"] == [
        worker("cpu", CPU_IMAGE, replicas=2, most=5, cpus="2", memory="6Gi")]
    assert cluster["headGroupSpec"] == {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": {"spec": {"containers": [{
            "name": "ray-head", "image": CPU_IMAGE,
            "ports": [{"name": "gcs-server", "containerPort": 6379},
                      {"name": "dashboard", "containerPort": 8265},
                      {"name": "client", "containerPort": 10001},
                      {"name": "serve", "containerPort": 8000}],
            "env": [{"name": "RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY", "value": "1"}],
            "resources": {"limits": {"cpu": "1", "memory": "2Gi"},
                          "requests": {"cpu": "1", "memory": "2Gi"}},
        }]}},
    }


def test_a_replica_larger_than_worker_cpus_widens_the_cpu_pods() -> None:
    groups = rayservice(sg.compile(gpu_graphs.rag, cluster=TWO_BY_TWO), ray_version="2.60.0",
                        worker_cpus=1)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert groups[-1] == worker("cpu", CPU_IMAGE, replicas=4, cpus="2", memory="8Gi")


def test_serve_config_is_the_plans_serve_config_as_yaml() -> None:
    plan = sg.compile(gpu_graphs.rag, cluster=TWO_BY_TWO)
    manifest = plan.to_rayservice(ray_version="2.60.0")
    text = manifest["spec"]["serveConfigV2"]
    assert isinstance(text, str)
    assert yaml.safe_load(text) == plan.to_serve_config()
    assert yaml.safe_load(text)["applications"][0]["args"]["graph"] == "tests.gpu_graphs:rag"
    env = {"pip": ["servegraph"]}
    manifest = plan.to_rayservice("tests.gpu_graphs:rag", runtime_env=env)
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == plan.to_serve_config(
        "tests.gpu_graphs:rag", runtime_env=env)


def test_the_document_around_it() -> None:
    manifest = sg.compile(gpu_graphs.rag, cluster=TWO_BY_TWO).to_rayservice(ray_version="2.60.0")
    assert list(manifest) == ["apiVersion", "kind", "metadata", "spec"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    assert manifest["metadata"] == {"name": "rag-search"}
    assert list(manifest["spec"]) == ["serveConfigV2", "rayClusterConfig"]
    assert list(manifest["spec"]["rayClusterConfig"]) == [
        "rayVersion", "headGroupSpec", "workerGroupSpecs"]


def test_images_version_name_and_namespace_overrides() -> None:
    plan = sg.compile(gpu_graphs.rag, cluster=TWO_BY_TWO)
    manifest = plan.to_rayservice(name="search-v2", image="registry.example/search:1",
                                  ray_version="2.55.1", namespace="prod")
    cluster = manifest["spec"]["rayClusterConfig"]
    assert manifest["metadata"] == {"name": "search-v2", "namespace": "prod"}
    assert cluster["rayVersion"] == "2.55.1"
    images = [container(cluster["headGroupSpec"])["image"],
              *(container(group)["image"] for group in cluster["workerGroupSpecs"])]
    assert images == ["registry.example/search:1"] * 4

    cluster = plan.to_rayservice(ray_version="2.55.1")["spec"]["rayClusterConfig"]
    assert [container(g)["image"] for g in [cluster["headGroupSpec"],
                                            *cluster["workerGroupSpecs"]]] == [
        "rayproject/ray:2.55.1-py311", "rayproject/ray:2.55.1-py311-gpu",
        "rayproject/ray:2.55.1-py311-gpu", "rayproject/ray:2.55.1-py311"]

    cluster = plan.to_rayservice(image="me/cpu:1", gpu_image="me/gpu:1")["spec"][
        "rayClusterConfig"]
    assert [container(g)["image"] for g in [cluster["headGroupSpec"],
                                            *cluster["workerGroupSpecs"]]] == [
        "me/cpu:1", "me/gpu:1", "me/gpu:1", "me/cpu:1"]


def test_default_ray_version_is_the_installed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    plan = sg.compile(gpu_graphs.words)
    cluster = plan.to_rayservice()["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert container(cluster["headGroupSpec"])["image"] == \
        f"rayproject/ray:{ray.__version__}-py311"
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    cluster = plan.to_rayservice()["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == PINNED_RAY_VERSION == "2.60.0"


def test_plan_method_is_the_function() -> None:
    plan = sg.compile(gpu_graphs.caption)
    assert plan.to_rayservice(ray_version="2.60.0", worker_cpus=8) == rayservice(
        plan, ray_version="2.60.0", worker_cpus=8)


@pytest.mark.parametrize(("text", "name"), [
    ("rag_search", "rag-search"), ("My Pipeline!v2", "my-pipeline-v2"),
    ("__x__", "x"), ("a" * 60, "a" * 47), ("a" * 46 + "_b", "a" * 46),
])
def test_k8s_names(text: str, name: str) -> None:
    assert k8s_name(text) == name


def test_bad_names_are_compile_errors() -> None:
    plan = sg.compile(gpu_graphs.words)
    with pytest.raises(sg.CompileError) as info:
        plan.to_rayservice(name="Search_v2", ray_version="2.60.0")
    assert str(info.value) == (
        "[rayservice] graph: 'Search_v2' is not a RayService name: KubeRay wants a DNS-1035 "
        "label (lowercase letters, digits and '-', starting with a letter) of at most 47 "
        "characters\n  hint: pass a valid name, e.g. name='my-pipeline'")
    numbered = plan.model_copy(update={"name": "2024_words"})
    with pytest.raises(sg.CompileError) as info:
        rayservice(numbered, "tests.gpu_graphs:words", ray_version="2.60.0")
    assert str(info.value) == (
        "[rayservice] graph: cannot make a RayService name from the pipeline name: "
        "'2024-words' is not a DNS-1035 label (lowercase letters, digits and '-', starting "
        "with a letter)\n  hint: pass a valid name, e.g. name='my-pipeline'")


def test_a_plan_without_its_layout_is_packed_as_without_a_cluster_spec() -> None:
    plan = sg.compile(gpu_graphs.caption)
    bare = plan.model_copy(update={"gpu_layout": None})
    assert rayservice(bare, ray_version="2.60.0") == rayservice(plan, ray_version="2.60.0")

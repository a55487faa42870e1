"""Compiling an `sg.App`: its graphs together, a stage they share one deployment (named once,
packed once, never fused into a driver), one ingress, one Serve application."""

from __future__ import annotations

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

import servegraph as sg
from servegraph.errors import BindError, OptionsError, PackingError
from servegraph.pipelines import front_door


@sg.deployment(gpu_memory="30GiB")
class Embedder:
    def embed(self, text: str) -> list[float]:
        return [float(len(text))]


@sg.deployment
def first(vector: list[float]) -> float:
    return vector[0]


def _graph(name: str, embedder: object) -> sg.Graph:
    with sg.InputNode() as inp:
        out = first.bind(embedder.embed.bind(inp))  # type: ignore[attr-defined]
    return sg.Graph(out, name=name)


def test_a_stage_two_graphs_share_is_one_deployment() -> None:
    plan = sg.compile(front_door.app)
    assert isinstance(plan, sg.CompiledApp)
    assert [stage.name for stage in plan.served()] == ["Normalizer"]
    assert plan.driver.name == "front_driver"
    assert plan.shared == {"Normalizer": ["words", "digits", "pids"]}
    assert plan.routes == {"/words": "words", "/digits": "digits"}
    assert list(plan.plans) == ["words", "digits", "pids"]
    assert [plan.plans_of("Normalizer")[i].name for i in range(3)] == [
        "words", "digits", "pids"]
    stage = plan.plans["words"].stage("Normalizer")
    assert stage.fused_into is None
    assert stage.fusion == ("shared by the graphs words, digits, pids: one deployment serves "
                            "them all")
    assert plan.plans["words"].stage("count_words").fused_into == "words_driver"


def test_each_graphs_node_ids_are_its_own() -> None:
    plan = sg.compile(front_door.app)
    ids = [{node.id for node in graph.nodes} for graph in plan.plans.values()]
    assert not ids[0] & ids[1] and not ids[1] & ids[2]
    assert sorted(ids[0]) == ["g0_n0", "g0_n1", "g0_n2", "g0_n3"]


def test_different_stages_of_one_class_get_names_unique_across_the_app() -> None:
    one, two = _graph("one", Embedder.bind()), _graph("two", Embedder.bind())
    plan = sg.compile(sg.App({"/one": one, "/two": two}),
                      cluster=sg.ClusterSpec(gpus=1, gpu_memory="80GiB"))
    assert [stage.name for stage in plan.served()] == ["Embedder", "Embedder_1"]
    assert plan.shared == {}


def test_a_shared_gpu_stage_is_packed_once() -> None:
    shared = Embedder.bind()
    cluster = sg.ClusterSpec(gpus=1, gpu_memory="40GiB")
    plan = sg.compile(sg.App({"/one": _graph("one", shared), "/two": _graph("two", shared)}),
                      cluster=cluster)
    assert plan.gpu_layout is not None
    assert plan.gpu_layout.sharing() == [["Embedder"]]
    with pytest.raises(PackingError):  # two stages of 30 GiB do not fit one 40 GiB GPU
        sg.compile(sg.App({"/one": _graph("one", Embedder.bind()),
                           "/two": _graph("two", Embedder.bind())}), cluster=cluster)


def test_the_serve_config_is_one_application_ray_accepts() -> None:
    config = sg.compile(front_door.app).to_serve_config("servegraph.pipelines.front_door:app")
    ServeDeploySchema.model_validate(config)
    [entry] = config["applications"]
    assert entry["name"] == "front"
    assert entry["route_prefix"] == "/"
    assert entry["import_path"] == "servegraph.serving.app:app_builder"
    assert entry["args"] == {"app": "servegraph.pipelines.front_door:app"}
    assert [d["name"] for d in entry["deployments"]] == ["Normalizer", "front_driver"]


def test_the_serve_config_finds_the_apps_module_itself() -> None:
    config = sg.compile(front_door.app).to_serve_config()
    assert config["applications"][0]["args"] == {"app": "servegraph.pipelines.front_door:app"}


def test_the_rayservice_serves_the_one_application() -> None:
    manifest = sg.compile(front_door.app).to_rayservice("servegraph.pipelines.front_door:app")
    assert manifest["metadata"]["name"] == "front"
    config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert [a["name"] for a in config["applications"]] == ["front"]


def test_explain_names_the_routes_and_the_shared_stage() -> None:
    text = sg.compile(front_door.app).explain()
    assert text.splitlines()[:5] == [
        "app 'front': 3 graphs, 1 deployments + ingress front_driver",
        "  ingress: FastAPI app 'front door'",
        "  routes: /words -> words, /digits -> digits",
        "  called by the ingress only: pids",
        "  shared: Normalizer serves words, digits, pids (one deployment)",
    ]
    assert "pipeline 'digits'" in text


def test_the_app_round_trips_through_json() -> None:
    plan = sg.compile(front_door.app)
    again = sg.CompiledApp.model_validate_json(plan.model_dump_json())
    assert again == plan
    assert again.plans["words"].explain() == plan.plans["words"].explain()


@pytest.mark.parametrize(("make", "message"), [
    (lambda: sg.App({"words": front_door.words}),
     "route 'words' must be a path starting with '/' (and not under '/-/', servegraph's "
     "own views)"),
    (lambda: sg.App({"/a/-/b": front_door.words}),
     "route '/a/-/b' must be a path starting with '/' (and not under '/-/', servegraph's "
     "own views)"),
    (lambda: sg.App({"/w": front_door.words, "/x": sg.Graph(
        front_door.digits.outputs, name="words")}), "two graphs of the app are named 'words'"),
    (lambda: sg.App({}), "the app holds no graph"),
    (lambda: sg.App({"/w": "words"}), "route '/w' maps to a str, not an sg.Graph"),
    (lambda: sg.App({"/w": front_door.words}, ingress=3),
     "ingress= needs an ASGI app (FastAPI()), got int"),
    (lambda: sg.App({"/w": front_door.words}, name="a b"),
     "app name 'a b' must be letters, digits, '_' or '-'"),
])
def test_bad_apps_say_what_to_fix(make: object, message: str) -> None:
    with pytest.raises(BindError) as caught:
        make()  # type: ignore[operator]
    assert caught.value.message == message


def test_two_stages_named_alike_on_purpose_are_refused() -> None:
    one = _graph("one", Embedder.options(name="E").bind())
    two = _graph("two", Embedder.options(name="E").bind())
    with pytest.raises(OptionsError, match="two deployments are named 'E'"):
        sg.compile(sg.App({"/one": one, "/two": two}),
                   cluster=sg.ClusterSpec(gpus=2, gpu_memory="80GiB"))

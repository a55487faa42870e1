"""An `sg.App` on a real Serve: the user's FastAPI app in front (its API-key dependency, its
GET route, its own route calling graphs), two graphs sharing one stage deployed as one
application with one deployment for that stage, the same app from a `serve deploy` config,
and each graph of the app over gRPC."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import httpx
import pytest
from ray import serve
from ray.serve.schema import ServeDeploySchema

import servegraph as sg
from servegraph.executors.ray import ray_private
from servegraph.pipelines import front_door
from servegraph.pipelines.front_door import API_KEY

pytestmark = pytest.mark.ray
KEY = {"x-api-key": API_KEY}


def test_the_front_door_on_serve(deploy: Callable[..., Any]) -> None:
    handle = deploy(front_door.app)
    assert isinstance(handle, sg.AppHandle)
    with httpx.Client(base_url=handle.url, timeout=60) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.post("/words", json={"text": "a b"}).status_code == 401
        answered = http.post("/words", json={"text": "A  b C"}, headers=KEY)
        assert (answered.status_code, answered.json()) == (200, {"words": 3})
        assert answered.headers["x-request-id"]
        failed = http.post("/digits", json={"text": " "}, headers=KEY)
        assert failed.status_code == 500
        assert failed.json()["stage"] == "Normalizer"
        bad = http.post("/digits", json={"txt": "1"}, headers=KEY)
        assert bad.status_code == 422
        own = http.post("/v1/words", json={"text": "x  y"}, headers=KEY)
        assert own.status_code == 200
        assert own.json()["count"] == 2
        assert http.post("/digits", json={"text": "4 5"}, headers=KEY).json() == {"sum": 9}
        assert http.get("/words/-/plan", headers=KEY).json()["name"] == "words"
        assert "/v1/words" in http.get("/openapi.json").json()["paths"]
    # the graphs' calls reach one deployment of the shared stage: one process answers
    assert handle["pids"].call({"text": "q"}) == own.json()["shared_pid"]
    assert handle["digits"].call({"text": "7 8"}) == {"sum": 15}
    deployments = serve.status().applications["front"].deployments
    assert set(deployments) == {"Normalizer", "front_driver"}
    with pytest.raises(KeyError, match="app 'front' has no graph 'nope'"):
        handle["nope"]


def test_connect_finds_a_running_app(deploy: Callable[..., Any]) -> None:
    deploy(front_door.app, name="front-connect", route_prefix="/front-connect")
    found = sg.connect("front-connect")
    assert isinstance(found, sg.AppHandle)
    assert list(found) == ["words", "digits", "pids"]
    assert found.plan == sg.compile(front_door.app)
    assert found["words"].call({"text": "one two three"}) == {"words": 3}


def test_a_serve_deploy_config_of_the_app_answers(
        ray_serve: int, grpc_port: int,
        stubs: dict[str, tuple[ModuleType, ModuleType]]) -> None:
    client = ray_private.read("ray.serve.context", "_get_global_client")()
    plan = sg.compile(front_door.app)
    config = plan.to_serve_config("servegraph.pipelines.front_door:app", grpc_port=9000)
    ServeDeploySchema.model_validate(config)  # gRPC options and all
    assert config["grpc_options"]["port"] == 9000
    entry = config["applications"][0] | {"name": "front-config", "route_prefix": "/cfg"}
    digits, digits_grpc = stubs["digits"]
    try:
        # the session's Serve runs with its own gRPC port: the application is deployed there
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": [entry]}),
                           _blocking=True)
        deployments = serve.status().applications["front-config"].deployments
        assert set(deployments) == {"Normalizer", "front_driver"}
        url = f"http://127.0.0.1:{ray_serve}/cfg"
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.get("/health").json() == {"status": "ok"}
            assert http.post("/words", json={"text": "a b"}).status_code == 401
            assert http.post("/words", json={"text": "a b"}, headers=KEY).json() == {
                "words": 2}
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            reply = digits_grpc.DigitsStub(channel).DigitsCall(
                digits.Text(text="3 4"), metadata=(("application", "front-config"),))
            assert json.loads(reply.value) == {"sum": 7}
    finally:
        serve.delete("front-config", _blocking=False)  # its name is used once


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ModuleType, ModuleType]]:
    """Each graph's `_pb2` and `_pb2_grpc`, made once: protobuf's default pool takes a
    package's messages once per process."""
    where = tmp_path_factory.mktemp("front_stubs")
    protos = sg.compile(front_door.app).to_proto()
    return {graph: _stubs(protos[graph], f"front_{graph}", where) for graph in protos}


def _stubs(text: str, name: str, where: Path) -> tuple[ModuleType, ModuleType]:
    """The `_pb2` and `_pb2_grpc` modules `protoc` makes of one graph's `.proto`."""
    protoc = pytest.importorskip("grpc_tools.protoc")
    (where / f"{name}.proto").write_text(text)
    assert protoc.main(["protoc", f"-I{where}", f"--python_out={where}",
                        f"--grpc_python_out={where}", str(where / f"{name}.proto")]) == 0
    sys.path.insert(0, str(where))
    try:
        return importlib.import_module(f"{name}_pb2"), importlib.import_module(f"{name}_pb2_grpc")
    finally:
        sys.path.remove(str(where))


def test_each_graph_of_the_app_answers_over_grpc(
        deploy: Callable[..., Any], grpc_port: int,
        stubs: dict[str, tuple[ModuleType, ModuleType]]) -> None:
    protos = sg.compile(front_door.app).to_proto()
    assert "rpc WordsCall(Text) returns (WordsReply);" in protos["words"]
    assert "rpc DigitsCall(Text) returns (DigitsReply);" in protos["digits"]
    words, words_grpc = stubs["words"]
    digits, digits_grpc = stubs["digits"]
    deploy(front_door.app, name="front-grpc", route_prefix="/front-grpc")
    metadata = (("application", "front-grpc"),)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        reply = words_grpc.WordsStub(channel).WordsCall(words.Text(text="a b  c"),
                                                        metadata=metadata)
        assert json.loads(reply.value) == {"words": 3}
        digits_stub = digits_grpc.DigitsStub(channel)
        assert json.loads(digits_stub.DigitsCall(digits.Text(text="1 2"),
                                                 metadata=metadata).value) == {"sum": 3}
        with pytest.raises(grpc.RpcError) as failed:
            digits_stub.DigitsCall(digits.Text(text=" "), metadata=metadata)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert "stage 'Normalizer'" in failed.value.details()
        assert json.loads(digits_stub.DigitsCall(digits.Text(text="9"),
                                                 metadata=metadata).value) == {"sum": 9}

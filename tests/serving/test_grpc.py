"""gRPC on real Serve, with a real `grpcio` client whose stubs `protoc` made from
`plan.to_proto()`: unary and server-streaming calls, each error's status code, the request id
in the trailing metadata, the service still serving after errors, and a `serve deploy` of a
config with `grpc_options` answering over gRPC."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest

import servegraph as sg
from servegraph.compiler.emit.proto import proto_schema
from servegraph.errors import DeployError
from servegraph.executors.ray import grpc_service
from servegraph.serving import launch
from tests import grpc_stages
from tests.cli.test_cli import ROOT, _free_port, ray_head, servegraph, wait_for_application

pytestmark = pytest.mark.ray


def stubs(plan: sg.CompiledPipeline, where: Path) -> tuple[ModuleType, ModuleType]:
    """The `_pb2` and `_pb2_grpc` modules `protoc` makes of the plan's `.proto`."""
    protoc = pytest.importorskip("grpc_tools.protoc")
    (where / f"{plan.name}.proto").write_text(plan.to_proto())
    assert protoc.main(["protoc", f"-I{where}", f"--python_out={where}",
                        f"--grpc_python_out={where}", str(where / f"{plan.name}.proto")]) == 0
    sys.path.insert(0, str(where))
    try:
        return (importlib.import_module(f"{plan.name}_pb2"),
                importlib.import_module(f"{plan.name}_pb2_grpc"))
    finally:
        sys.path.remove(str(where))


class Served:
    """A deployed graph and a client for it: `messages` (its `_pb2`) and `stub`."""

    def __init__(self, graph: sg.Graph, port: int, where: Path) -> None:
        plan = sg.compile(graph)
        self.messages, services = stubs(plan, where)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = getattr(services, f"{proto_schema(plan).service}Stub")(self.channel)
        self.metadata = (("application", plan.name),)
        self.handle = sg.serve(plan)  # last: `close` stops it

    def close(self) -> None:
        try:
            self.channel.close()
        finally:
            self.handle.shutdown(wait=False)


@pytest.fixture(scope="module")
def split(grpc_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(grpc_stages.SPLIT, grpc_port, tmp_path_factory.mktemp("split"))
    try:
        yield served
    finally:
        served.close()


@pytest.fixture(scope="module")
def ticks(grpc_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(grpc_stages.TICKS, grpc_port, tmp_path_factory.mktemp("ticks"))
    try:
        yield served
    finally:
        served.close()


def failure(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def test_unary_call_answers_with_the_request_id(split: Served) -> None:
    question = split.messages.Question(text="a b c", times=2)
    answer, call = split.stub.Call.with_call(question, metadata=split.metadata)
    assert (list(answer.words), answer.length) == (["a", "b", "c"] * 2, 6)
    request_id = dict(call.trailing_metadata())["x-request-id"]
    assert request_id
    _, call = split.stub.Call.with_call(question, metadata=(*split.metadata,
                                                            ("x-request-id", "client-7")))
    assert dict(call.trailing_metadata())["x-request-id"] == "client-7"


def test_bad_input_is_invalid_argument(split: Served) -> None:
    error = failure(lambda: split.stub.Call(split.messages.Question(text="a", times=0),
                                            metadata=split.metadata))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("request body does not fit tests.grpc_stages:Question: "
                               "invalid times (greater_than_equal)")
    assert dict(error.trailing_metadata())["x-request-id"]
    garbage = split.channel.unary_unary("/servegraph.grpc_split.GrpcSplit/Call")
    error = failure(lambda: garbage(b"\xff\xff", metadata=split.metadata))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("the request is not a Question message")


def test_a_stage_failure_is_internal_naming_the_stage(split: Served) -> None:
    error = failure(lambda: split.stub.Call(split.messages.Question(text="boom"),
                                            metadata=split.metadata))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details().startswith("stage 'Splitter' (tests/grpc_stages.py:")
    assert error.details().endswith("raised ValueError: boom was asked for")


def test_a_timeout_is_deadline_exceeded(split: Served) -> None:
    slow = split.messages.Question(text="a", delay_s=grpc_stages.STAGE_TIMEOUT_S * 10)
    error = failure(lambda: split.stub.Call(slow, metadata=split.metadata))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details().startswith("stage 'Splitter'")
    assert "timed out: no result within timeout_s=0.5" in error.details()
    budget = split.messages.Question(text="a", delay_s=grpc_stages.STAGE_TIMEOUT_S / 2)
    error = failure(lambda: split.stub.Call(budget, metadata=(*split.metadata,
                                                              ("x-request-timeout", "0.05"))))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.details().startswith("the request's deadline")
    assert error.details().endswith("with Splitter still running (cancelled)")


def test_the_service_keeps_serving_after_errors(split: Served) -> None:
    bad = [split.messages.Question(text="boom"), split.messages.Question(text="a", times=0)]
    for question in bad * 3:
        failure(lambda question=question: split.stub.Call(question, metadata=split.metadata))
    answer = split.stub.Call(split.messages.Question(text="still here"), metadata=split.metadata)
    assert list(answer.words) == ["still", "here"]
    assert split.handle.call({"text": "over a handle"}) == grpc_stages.Answer(
        words=["over", "a", "handle"], length=3)


def test_server_streaming_sends_a_message_per_chunk(ticks: Served) -> None:
    chunks = ticks.stub.Stream(ticks.messages.Count(n=4), metadata=ticks.metadata)
    assert [chunk.value for chunk in chunks] == [0, 1, 2, 3]
    assert list(ticks.stub.Call(ticks.messages.Count(n=3), metadata=ticks.metadata).value) == [
        0, 1, 2]


def test_a_stream_failing_midway_keeps_its_chunks_and_ends_internal(ticks: Served) -> None:
    received: list[int] = []
    stream = ticks.stub.Stream(ticks.messages.Count(n=7), metadata=ticks.metadata)
    error = failure(lambda: received.extend(chunk.value for chunk in stream))
    assert received == [0, 1, 2, 3, 4]
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details().startswith("stage 'count_up'")
    assert error.details().endswith("raised ValueError: 7 is more than 5")
    assert [c.value for c in ticks.stub.Stream(ticks.messages.Count(n=2),
                                               metadata=ticks.metadata)] == [0, 1]


def test_stream_on_a_graph_that_does_not_stream_is_unimplemented(split: Served) -> None:
    stream = split.channel.unary_stream("/servegraph.grpc_split.GrpcSplit/Stream",
                                        request_serializer=lambda m: m.SerializeToString())
    error = failure(lambda: list(stream(split.messages.Question(text="a"),
                                        metadata=split.metadata)))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.details() == "graph 'grpc_split' does not stream its output: call Call"
    other = split.channel.unary_unary("/servegraph.grpc_split.GrpcSplit/plan")
    assert failure(lambda: other(b"", metadata=split.metadata)).code() == \
        grpc.StatusCode.UNIMPLEMENTED  # only Call/Stream methods reach the driver


def test_sg_serve_refuses_a_grpc_port_serve_did_not_start_with(grpc_port: int) -> None:
    launch.require_grpc(grpc_port)  # the session's own: nothing to say
    with pytest.raises(DeployError, match=f"gRPC on port {grpc_port + 1} was asked for, but "
                       f"the running Serve has servegraph's gRPC on {grpc_port}; Serve reads "
                       "its gRPC options only when it starts"):
        sg.serve(grpc_stages.SPLIT, name="never-deployed", grpc_port=grpc_port + 1)


def test_rays_server_still_has_the_method_the_servicer_reads() -> None:
    """`grpc_service` reads one private method of Ray's gRPC server: fail loudly when moved."""
    module = importlib.import_module("ray.serve._private.grpc_util")
    assert callable(getattr(module.gRPCGenericServer, grpc_service.OVERRIDE))
    assert grpc_service.streaming("/servegraph.a.A/Stream") is True
    assert grpc_service.streaming("/servegraph.a.A/Call") is False
    assert grpc_service.streaming("/other.A/Call") is None


def test_serve_deploy_of_a_config_with_grpc_answers_over_grpc(tmp_path: Path) -> None:
    """Ray's own `serve deploy` starts Serve with the config's `grpc_options` on a fresh head."""
    dashboard, http_port, port = _free_port(), _free_port(), _free_port()
    config = tmp_path / "serve.yaml"
    written = servegraph("compile", "tests.grpc_stages:SPLIT", "-o", str(config), "--host",
                         "127.0.0.1", "--port", str(http_port), "--grpc-port", str(port))
    assert written.returncode == 0, written.stderr
    messages, services = stubs(sg.compile(grpc_stages.SPLIT), tmp_path)
    with ray_head("--include-dashboard=true", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={dashboard}",
                  f"--dashboard-agent-listen-port={_free_port()}") as (_, env):
        rest = f"http://127.0.0.1:{dashboard}"
        serve_bin = os.path.join(os.path.dirname(sys.executable), "serve")
        deployed = subprocess.run([serve_bin, "deploy", str(config), "--address", rest],
                                  cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=300, check=False)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert wait_for_application(rest, "grpc_split") == ("RUNNING", "")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = services.GrpcSplitStub(channel)
            answer = stub.Call(messages.Question(text="over grpc"),
                               metadata=(("application", "grpc_split"),), timeout=60)
            assert list(answer.words) == ["over", "grpc"]

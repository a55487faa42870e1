"""Calls on Serve ask for the stage's own method by name, so that Serve's access log line names
it (`CALL shout OK 2.4ms`, not `CALL __call__`): the driver's handles and the replica's
attributes, checked without Ray (a replica object is built in-process, the handles are fakes)."""

from __future__ import annotations

import asyncio
from typing import Any

import servegraph as sg
from servegraph.executors.program import Program
from servegraph.executors.ray.driver import ServeRunner
from servegraph.executors.ray.replica import StageReplica, serve_method, serve_methods
from tests import cli_graphs, stream_stages


class FakeHandle:
    """A `DeploymentHandle` that answers `remote` with the method it was asked for."""

    def __init__(self, method: str = "__call__", **options: Any) -> None:
        self.method, self.options_given = method, options

    def options(self, *, method_name: str, **options: Any) -> FakeHandle:
        return FakeHandle(method_name, **options)

    def remote(self, *args: Any) -> tuple[str, tuple[Any, ...]]:
        return self.method, args


def steps(plan: sg.CompiledPipeline, stage: str) -> dict[str, Any]:
    return {step.node.method or "": step for step in Program(plan).steps
            if step.node.stage == stage}


def test_a_call_asks_for_the_stages_method_unless_the_name_is_the_replicas() -> None:
    plan = sg.compile(cli_graphs.loud)
    methods = serve_methods(plan)
    shouter = steps(plan, "Shouter")
    assert methods[shouter["shout"].node.id] == "shout"
    assert methods[shouter["check_health"].node.id] == "__call__"  # Serve's health hook
    assert [serve_method(step.node) for step in steps(plan, "length").values()] == ["__call__"]

    runner = ServeRunner({"Shouter": FakeHandle()}, "loud_driver", methods)
    assert runner.call(shouter["shout"], ["abc"]) == (
        "shout", (shouter["shout"].node.id, (), "abc"))
    assert runner.call(shouter["check_health"], ["ABC"])[0] == "__call__"


def test_the_replica_answers_the_method_by_its_name() -> None:
    plan = sg.compile(cli_graphs.loud)
    replica = StageReplica(plan, "Shouter")
    assert replica.shout == replica.__call__
    assert not hasattr(StageReplica(plan, "Shouter"), "check_health")  # Serve's, left alone
    node_id = steps(plan, "Shouter")["shout"].node.id
    assert asyncio.run(replica.shout(node_id, (), "abc")) == "ABC"


def test_a_stream_is_opened_by_its_method_name() -> None:
    with sg.InputNode() as inp:
        out = stream_stages.Shout.bind().shout.bind(stream_stages.Words.bind().words.bind(inp))
    plan = sg.compile(sg.Graph(out, name="streams"), fuse=False)
    words = steps(plan, "Words")["words"]
    assert serve_method(words.node) == "words"
    replica = StageReplica(plan, "Words")
    assert replica.words == replica.stream
    runner = ServeRunner({"Words": FakeHandle()}, "streams_driver", serve_methods(plan))
    handle_method, _ = runner.open(runner.call(words, ["a b"]))
    assert handle_method == "words"
    assert runner.by_method[("Words", "words", True)].options_given == {"stream": True}

"""Stage code from anywhere (`serving.ship`): which modules go to the replicas by value, and
the stage that cannot go at all, refused before Serve tries. On Ray: a stage defined in a test
module (tests/testing/test_testing_plugin.py) and in a script (tests/serving/test_connect.py)."""

from __future__ import annotations

import sys
import threading
import types

import pytest
from ray import cloudpickle

import servegraph as sg
from servegraph.serving.ship import importable_by_workers, ship_stage_code
from tests.stages import diamond


def test_modules_a_fresh_interpreter_finds_are_not_shipped() -> None:
    assert importable_by_workers(("tests", "servegraph", "json", "no_such_module_here")) == {
        "tests", "servegraph", "json"}
    assert ship_stage_code(sg.compile(diamond())) == []


def test_a_module_only_this_process_can_import_is_pickled_by_value(
        monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("only_here")
    exec("import servegraph as sg\n\n@sg.deployment\ndef shout(text: str) -> str:\n"
         "    return text.upper()\n", module.__dict__)
    monkeypatch.setitem(sys.modules, "only_here", module)
    with sg.InputNode() as inp:
        out = module.shout.bind(inp.text)
    plan = sg.compile(sg.Graph(out, name="here"))
    try:
        assert ship_stage_code(plan) == ["only_here"]
        sent = cloudpickle.dumps(plan)
        monkeypatch.delitem(sys.modules, "only_here")  # as in a replica
        [target] = cloudpickle.loads(sent).memory.objects.values()
        assert target("hi") == "HI"
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def test_a_stage_that_cannot_be_pickled_fails_naming_it() -> None:
    lock = threading.Lock()

    @sg.deployment
    def guarded(x: int) -> int:
        with lock:
            return x

    with sg.InputNode() as inp:
        out = guarded.bind(inp.x)
    with pytest.raises(sg.DeployError) as error:
        ship_stage_code(sg.compile(sg.Graph(out, name="guarded")))
    assert str(error.value).startswith(
        "stage 'guarded' (tests.serving.test_ship:test_a_stage_that_cannot_be_pickled_fails_"
        "naming_it.<locals>.guarded) cannot be sent to the replicas: pickling it failed "
        "(TypeError: cannot pickle '_thread.lock' object); define it at the top level of a "
        "module, holding no open files, locks or sockets (build those in __init__)")

"""`sg.connect(name)`: a handle to a servegraph application deployed earlier, here or by
another process, on the session's Ray; and stages defined in a script (`__main__`, and a module
beside it that only the script's directory holds) served from that other process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray

import servegraph as sg
from tests.stream_stages import shouted

pytestmark = pytest.mark.ray
ROOT = str(Path(__file__).resolve().parents[2])


def test_connect_calls_awaits_and_streams_a_running_application(
        deploy: Callable[..., Any]) -> None:
    served = deploy(shouted(), name="connect_shouted", route_prefix="/connect-shouted")
    handle = sg.connect("connect_shouted")
    assert (handle.name, handle.route_prefix, handle.url) == (
        "connect_shouted", "/connect-shouted", served.url)
    assert handle.plan == served.plan == sg.compile(shouted())
    assert list(handle.stream({"text": "a b"})) == ["A ", "B "]
    assert handle.call({"text": "a b"}) == ["A ", "B "]
    assert asyncio.run(handle.acall({"text": "c"})) == ["C "]


def test_connect_to_no_such_application_names_the_running_ones(
        deploy: Callable[..., Any]) -> None:
    deploy(shouted(), name="connect_other", route_prefix="/connect-other")
    with pytest.raises(sg.DeployError) as error:
        sg.connect("connect_nope")
    message = str(error.value)
    assert message.startswith("no Serve application named 'connect_nope' is running (running: ")
    assert "connect_other" in message
    assert message.endswith("); deploy it first (sg.serve, servegraph deploy, serve deploy) or "
                            "connect to the cluster it runs on (RAY_ADDRESS, or "
                            "sg.connect(name, address=...))")


SCRIPT = '''
import sys

import servegraph as sg
from beside import Mark  # a module only this script's directory holds


@sg.deployment(num_replicas=2)
def shout(text: str) -> str:
    return text.upper()


with sg.InputNode() as inp:
    out = Mark.bind("!").add.bind(shout.bind(inp.text))
handle = sg.serve(sg.Graph(out, name="scripted"), name=sys.argv[1], route_prefix="/scripted")
print(handle.call({"text": "hi"}))
'''
BESIDE = '''
import servegraph as sg


@sg.deployment(num_replicas=2)
class Mark:
    def __init__(self, mark: str) -> None:
        self.mark = mark

    def add(self, text: str) -> str:
        return text + self.mark
'''
CONNECTING = '''
import sys

import servegraph as sg

print(sg.connect(sys.argv[1]).call({"text": "yo"}))
'''


def test_stages_of_a_script_served_and_connected_to_from_other_processes(
        ray_serve: int, tmp_path: Path) -> None:
    """Another process serves stages from its `__main__` and from a module beside it on this
    session's Ray (run from the repository root, so neither is importable by name there); this
    process connects to the application, and a third process connects by address."""
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    (tmp_path / "beside.py").write_text(textwrap.dedent(BESIDE))
    (tmp_path / "connecting.py").write_text(textwrap.dedent(CONNECTING))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    try:
        served = subprocess.run([sys.executable, str(tmp_path / "script.py"), "scripted"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                                check=False)
        assert served.returncode == 0, served.stderr[-3000:]
        assert served.stdout.splitlines()[-1] == "HI!"
        assert sg.connect("scripted").call({"text": "ok"}) == "OK!"
        other = subprocess.run([sys.executable, str(tmp_path / "connecting.py"), "scripted"],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                               check=False)
        assert other.returncode == 0, other.stderr[-3000:]
        assert other.stdout.splitlines()[-1] == "YO!"
    finally:
        from ray import serve

        serve.delete("scripted", _blocking=False)  # its name is used once


EVERY_WAY = '''
import asyncio
import json
import sys

import servegraph as sg
from servegraph.executors.ray.ray_private import router_in_separate_loop

handle = sg.connect(sys.argv[1])


async def awaited(text):
    streamed = [chunk async for chunk in handle.astream({"text": text})]
    return [await handle.acall({"text": text}), streamed,
            (await handle.atrace({"text": text})).output]


print(json.dumps({"own loop": not router_in_separate_loop(),
                  "first loop": asyncio.run(awaited("a b")),
                  "second loop": asyncio.run(awaited("c")),
                  "blocking": [handle.call({"text": "d"}), list(handle.stream({"text": "e"}))]}))
'''


def test_a_process_on_serves_throughput_path_calls_every_way_from_any_loop(
        deploy: Callable[..., Any], tmp_path: Path) -> None:
    """Imported in Serve's throughput-optimised mode, a handle routes on the loop it was first
    used in: awaited calls from two loops in turn (each gets handles of its own) and blocking
    calls (on the handle's own loop) all answer."""
    deploy(shouted(), name="every_way", route_prefix="/every-way")
    (tmp_path / "every_way.py").write_text(textwrap.dedent(EVERY_WAY))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
    done = subprocess.run([sys.executable, str(tmp_path / "every_way.py"), "every_way"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "own loop": True,
        "first loop": [["A ", "B "], ["A ", "B "], ["A ", "B "]],
        "second loop": [["C "], ["C "], ["C "]],
        "blocking": [["D "], ["E "]]}

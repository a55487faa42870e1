"""The `servegraph` command with GPU stages on a machine without a GPU: `render` for the cluster
flags or from a compiled plan, and `run --gpus`, whose embedded Ray gets logical GPUs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import servegraph as sg
from tests import cli_graphs
from tests.cli.test_cli import ROOT, servegraph


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_render_packs_for_the_cluster_flags_or_draws_a_compiled_plan(tmp_path: Path) -> None:
    """`render` takes the cluster flags as check and compile do, and a plan .json as it was
    compiled (flags refused there: it was packed already)."""
    drawn, again, plan_file = tmp_path / "a.mmd", tmp_path / "b.mmd", tmp_path / "plan.json"
    done = servegraph("render", "tests.cli_graphs:lengths", "--gpus", "2x16GiB", "-o",
                      str(drawn))
    assert (done.returncode, done.stdout, done.stderr) == (0, f"wrote {drawn}\n", "")
    plan = sg.compile(cli_graphs.lengths, cluster=sg.ClusterSpec(gpus=2, gpu_memory="16GiB"))
    assert drawn.read_text() == sg.render(plan, format="mmd").decode()
    assert "node0 GPU 1 · 100% · 16GiB of 16GiB<br/>WordLengths#35;1 1" in drawn.read_text()
    compiled = servegraph("compile", "tests.cli_graphs:lengths", "--gpus", "2x16GiB", "-o",
                          str(plan_file))
    assert compiled.returncode == 0, compiled.stderr
    done = servegraph("render", str(plan_file), "-o", str(again))
    assert (done.returncode, done.stderr) == (0, "")
    assert again.read_text() == drawn.read_text()
    refused = servegraph("render", str(plan_file), "--gpus", "2", "-o", str(again))
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.endswith(
        f"servegraph render: error: {plan_file} is a compiled plan, packed when it was "
        "compiled: drop the cluster flags, or render the graph (MODULE:ATTR) with them\n")
    unsized = servegraph("render", "tests.cli_graphs:lengths", "-o", str(drawn))
    assert unsized.returncode == 0, unsized.stderr
    assert "GPU ? (16GiB, no cluster spec)" in drawn.read_text()
    not_a_plan = servegraph("render", str(drawn.with_suffix(".json")), "-o", str(again))
    assert (not_a_plan.returncode, not_a_plan.stderr) == (
        1, f"servegraph render: error: cannot read {drawn.with_suffix('.json')}: No such file "
        "or directory\n")
    assert "compiled plan's .json file" in servegraph("render", "--help").stdout


@pytest.mark.ray
def test_run_serves_a_gpu_memory_stage_on_the_embedded_ray_without_a_gpu() -> None:
    """`run --gpus 2x16GiB` packs for two 16 GiB GPUs, and the embedded Ray it starts has two
    logical GPUs, so the stage's replicas (a whole GPU each) run on a machine without one."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    server = subprocess.Popen(
        [sys.executable, "-m", "servegraph", "run", "tests.cli_graphs:lengths", "--gpus",
         "2x16GiB", "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stderr is not None
        lines = [server.stdout.readline()]
        while lines[-1] and not lines[-1].startswith("serving "):  # or the end: it failed
            lines.append(server.stdout.readline())
        url = f"http://127.0.0.1:{port}/lengths"
        assert lines[-1], f"run ended: {server.wait(timeout=60)}\n{server.stderr.read()}"
        assert lines[-1] == f"serving 'lengths': POST JSON to {url} (Ctrl-C stops)\n"
        assert "  WordLengths          class    2 replicas, 1 CPU, 1 GPU (from gpu_memory " \
            "16GiB of 16GiB)\n" in lines
        assert httpx.post(url, json={"text": "a bb ccc dddd"}, timeout=60).json() == 10
        served = httpx.get(f"{url}/-/plan", timeout=60).json()
        assert served["deployments"][0]["options"]["ray_actor_options"] == {"num_gpus": 1.0}
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=60)
    assert "RuntimeWarning" not in errors  # its own Ray, with servegraph's switches

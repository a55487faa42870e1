"""The `servegraph` command through a subprocess: verbs, exit codes, messages."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def servegraph(*args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servegraph", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_check_ok_and_failing() -> None:
    ok = servegraph("check", "tests.cli_graphs:good")
    assert (ok.returncode, ok.stdout, ok.stderr) == (
        0, "ok: 'diamond' compiles (validate, typecheck, resources, pack, lower)\n", "")
    bad = servegraph("check", "tests.cli_graphs:broken")
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr.startswith("servegraph check: error: [typecheck] stage 'count' "
                                 "(tests/cli_graphs.py:21: wrong = count.bind(shout.bind(")
    assert "Traceback" not in bad.stderr


def test_bad_targets() -> None:
    assert servegraph("check", "nonsense").stderr == (
        "servegraph check: error: expected MODULE:ATTR (e.g. "
        "servegraph.pipelines.search:graph), got 'nonsense'\n")
    missing = servegraph("check", "tests.no_such_module:graph")
    assert missing.returncode == 1
    assert missing.stderr.startswith(
        "servegraph check: error: cannot import module 'tests.no_such_module'")
    assert servegraph("check", "tests.cli_graphs:nothing").stderr == (
        "servegraph check: error: module 'tests.cli_graphs' has no attribute 'nothing'\n")
    assert servegraph("check", "tests.cli_graphs:not_a_graph").stderr == (
        "servegraph check: error: tests.cli_graphs:not_a_graph is a int, not an sg.Graph\n")
    debug = servegraph("--debug", "check", "tests.cli_graphs:broken")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_compile_summary_and_json(tmp_path: Path) -> None:
    summary = servegraph("compile", "tests.cli_graphs:good")
    assert summary.returncode == 0
    assert summary.stdout.splitlines()[0] == (
        "pipeline 'diamond': 6 nodes, 4 stage deployments + driver")
    target = tmp_path / "plan.json"
    written = servegraph("compile", "tests.cli_graphs:good", "-o", str(target))
    assert written.stdout == f"wrote {target}\n"
    plan = json.loads(target.read_text())
    assert [d["name"] for d in plan["deployments"]] == ["Inc", "double", "triple", "add"]


def test_render_text_formats(tmp_path: Path) -> None:
    for suffix, first_line in ((".mmd", "flowchart LR"), (".dot", 'digraph "diamond" {')):
        out = tmp_path / f"diamond{suffix}"
        done = servegraph("render", "tests.cli_graphs:good", "-o", str(out))
        assert done.returncode == 0, done.stderr
        assert out.read_text().splitlines()[0] == first_line


def test_help_lists_every_verb() -> None:
    text = servegraph("--help").stdout
    for verb in ("check", "compile", "render", "run", "deploy", "status", "shutdown", "bench"):
        assert verb in text


def test_run_local_serves_http_and_bench_loads_it() -> None:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "servegraph", "run", "--local", "tests.cli_graphs:good",
         "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline() for _ in range(7)]
        url = f"http://127.0.0.1:{port}/diamond"
        assert lines[0] == "pipeline 'diamond': 6 nodes, 4 stage deployments + driver\n"
        assert lines[-1] == (f"serving 'diamond' in-process (no Ray): POST JSON to {url} "
                             "(Ctrl-C stops)\n")
        assert httpx.post(url, json={"x": 3}).json() == 20
        assert httpx.post(url, json={"y": 3}).status_code == 422
        assert httpx.get(f"{url}/-/plan").json()["name"] == "diamond"
        bench = servegraph("bench", url, "--payload", '{"x": 1}', "-n", "40", "-c", "4")
        assert bench.returncode == 0, bench.stderr
        report = bench.stdout.splitlines()
        assert report[0].startswith(f"{url}: 40 requests at concurrency 4 in ")
        assert report[-1] == "  responses: 200: 40"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.ray
def test_deploy_status_shutdown_on_a_real_ray_head(tmp_path: Path) -> None:
    """`ray start --head` in a subprocess (stopped afterwards, even on failure), then the CLI
    deploys onto it, lists it, serves HTTP from it and deletes it."""
    gcs_port, http_port = _free_port(), _free_port()
    address = f"127.0.0.1:{gcs_port}"
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    # Ray 2.60 turns on token authentication for `ray start`; the token file in ~/.ray is
    # shared with the other Ray instances of this test run, so this private cluster opts out.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={gcs_port}", "--num-cpus=8",
         "--include-dashboard=false", "--disable-usage-stats"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert head.stdout is not None
        started: list[str] = []
        while not started or ("Ray runtime started" not in started[-1] and started[-1]):
            started.append(head.stdout.readline())
        assert "Ray runtime started" in started[-1], "".join(started)

        deployed = servegraph("deploy", "tests.cli_graphs:good", "--address", address,
                              "--port", str(http_port), env=env)
        assert deployed.returncode == 0, deployed.stderr
        url = f"http://127.0.0.1:{http_port}/diamond"
        assert deployed.stdout.splitlines()[-1] == f"deployed 'diamond': POST JSON to {url}"
        assert httpx.post(url, json={"x": 1}, timeout=60).json() == 10

        status = servegraph("status", "--address", address, env=env)
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert lines[0] == "diamond  RUNNING"
        assert sorted(line.split()[0] for line in lines[1:]) == [
            "Inc", "add", "diamond_driver", "double", "triple"]
        assert all(line.split()[1:] == ["HEALTHY", "RUNNING", "1"] for line in lines[1:])
        drawn = tmp_path / "live.dot"
        rendered = servegraph("status", "diamond", "--address", address, "--render",
                              str(drawn), env=env)
        assert rendered.returncode == 0, rendered.stderr
        assert rendered.stdout.splitlines()[-1] == f"wrote {drawn}"
        assert drawn.read_text().count('fillcolor="#d9f2d9"') == 4  # four HEALTHY stages
        assert 'label="Inc · 1 replica · 1 CPU · HEALTHY: RUNNING 1"' in drawn.read_text()
        missing = servegraph("status", "nope", "--address", address, env=env)
        assert missing.stderr == ("servegraph status: error: no Serve application named "
                                  "'nope' (running: diamond)\n")

        shut = servegraph("shutdown", "diamond", "--address", address, env=env)
        assert (shut.returncode, shut.stdout) == (0, "deleted 'diamond'\n")
        after = servegraph("status", "--address", address, env=env)
        assert after.stdout == "no Serve applications\n"
    finally:
        head.terminate()
        head.wait(timeout=120)


def test_cluster_verbs_need_an_address() -> None:
    env_free = servegraph("status")
    assert env_free.returncode == 1
    assert env_free.stderr == ("servegraph status: error: no cluster to talk to: pass "
                               "--address (e.g. 127.0.0.1:6379) or set RAY_ADDRESS\n")

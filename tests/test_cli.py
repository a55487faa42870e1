"""The `servegraph` command through a subprocess: verbs, exit codes, messages."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def servegraph(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servegraph", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_check_ok_and_failing() -> None:
    ok = servegraph("check", "tests.cli_graphs:good")
    assert (ok.returncode, ok.stdout, ok.stderr) == (
        0, "ok: 'diamond' compiles (validate, typecheck, lower)\n", "")
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
    for verb in ("check", "compile", "render", "run", "bench"):
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

"""The `servegraph` command through a subprocess: verbs, exit codes, messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    for verb in ("check", "compile", "render", "run"):
        assert verb in text

"""Proof on Ray across nodes: tests/multinode_check.py, in its own process (pytest's own Ray
may be running in this one), starts a two-node cluster with logical GPUs (2 + 1), compiles for
the spec `detect_cluster` reads off it, deploys with `sg.serve` and compares where Ray put each
replica with the plan: with Serve's pack scheduling (which servegraph turns on) every replica
lands on the node and shares the GPU the plan says."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
CHECK_TIMEOUT_S = 420  # the check's own deployment deadline is 300 s; 2 cores, shared
STOP_TIMEOUT_S = 90    # after SIGINT, the check stops Serve and the cluster


def run_check(*args: str) -> tuple[list[str], str]:
    """Run the check; its own report lines (not Ray's prefixed ones) and its stderr. On a
    timeout it is interrupted (SIGINT), so its `finally` stops the cluster, then killed if
    need be (the cluster's reaper processes then stop it)."""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    check = subprocess.Popen([sys.executable, "-u", "-m", "tests.multinode_check", *args],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        try:
            stdout, stderr = check.communicate(timeout=CHECK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            check.send_signal(signal.SIGINT)
            stdout, stderr = check.communicate(timeout=STOP_TIMEOUT_S)
            pytest.fail(f"the check took over {CHECK_TIMEOUT_S}s:\n{stdout}\n{stderr}")
    finally:
        if check.poll() is None:
            check.kill()
            check.wait()
    ours = [line for line in stdout.splitlines()
            if not re.match(r"(\x1b\[[0-9;]*m)?\(", line)]  # Ray's "(raylet) ..." lines
    return ours, stderr


def per_node(lines: list[str], prefix: str) -> str:
    (line,) = [line for line in lines if line.startswith(prefix)]
    return line.removeprefix(prefix)


@pytest.mark.ray
def test_ray_places_every_replica_where_the_plan_says(tmp_path: Path) -> None:
    lines, stderr = run_check("--views", str(tmp_path))
    report = "\n".join(lines) + "\n--- stderr ---\n" + stderr
    assert lines[-1:] == ["multinode check passed"], report
    assert per_node(lines, "ray per node: ") == per_node(lines, "planned per node: "), report
    assert lines == [
        "pipeline 'placement': 6 nodes, 3 stage deployments + driver (1 fused into the "
        "driver); passes: validate, typecheck, resources, pack, fuse, lower",
        "cluster: head: 2 x 24GiB GPU, 8 CPU; worker: 1 x 24GiB GPU, 8 CPU",
        "deployments:",
        "  Embedder             class    2 replicas, 1 CPU, 0.5 GPU (from gpu_memory 12GiB of "
        "24GiB)",
        "  Reranker             class    2 replicas, 1 CPU, 0.25 GPU (declared)",
        "  Generator            class    2 replicas, 1 CPU, 0.67 GPU (from gpu_memory 16GiB of "
        "24GiB)",
        "  placement_driver     driver   1 replica, 0 CPU, max_ongoing_requests=1000, runs "
        "tokenize in-process",
        "fusion:",
        "  tokenize             fused into placement_driver: light CPU stage",
        "  Embedder             own deployment: needs a GPU (0.5): never fused across a GPU "
        "boundary",
        "  Reranker             own deployment: needs a GPU (0.25): never fused across a GPU "
        "boundary",
        "  Generator            own deployment: needs a GPU (0.67): never fused across a GPU "
        "boundary",
        "GPU layout on the cluster: 3 GPUs used, lower bound 3",
        "  head GPU 0: 92%, 22GiB of 24GiB: Generator#1 0.67, Reranker#0 0.25",
        "  head GPU 1: 100%, 24GiB of 24GiB: Embedder#0 0.5, Embedder#1 0.5",
        "  worker GPU 0: 92%, 22GiB of 24GiB: Generator#0 0.67, Reranker#1 0.25",
        "planned per node: {'head': [['Embedder', 'Embedder'], ['Generator', 'Reranker']], "
        "'worker': [['Generator', 'Reranker']]}",
        "planned sharing: [['Embedder', 'Embedder'], ['Generator', 'Reranker'], "
        "['Generator', 'Reranker']]",
        "application RUNNING; replica states: {'Embedder': {'RUNNING': 2}, 'Generator': "
        "{'RUNNING': 2}, 'Reranker': {'RUNNING': 2}, 'placement_driver': {'RUNNING': 1}}",
        "GPU replicas that recorded their view: 6 of 6",
        "ray per node: {'head': [['Embedder', 'Embedder'], ['Generator', 'Reranker']], "
        "'worker': [['Generator', 'Reranker']]}",
        "ray sharing: [['Embedder', 'Embedder'], ['Generator', 'Reranker'], "
        "['Generator', 'Reranker']]",
        "GPUs free: 0.16 of 3",
        "answer: 'little > these > words > rank'; over HTTP: 'little > these > words > rank'",
        "multinode check passed",
    ], report
    assert len(list(tmp_path.glob("*.json"))) == 6  # one view per GPU replica, none restarted


@pytest.mark.ray
def test_a_layout_nothing_forces_lands_as_planned_too(tmp_path: Path) -> None:
    lines, stderr = run_check("--graph", "pairs", "--views", str(tmp_path))
    report = "\n".join(lines) + "\n--- stderr ---\n" + stderr
    assert lines[-1:] == ["multinode check passed"], report
    assert per_node(lines, "planned per node: ") == (
        "{'head': [['Beta', 'Beta'], ['Gamma', 'Gamma']], 'worker': [['Alpha', 'Alpha']]}")
    assert per_node(lines, "ray per node: ") == per_node(lines, "planned per node: "), report

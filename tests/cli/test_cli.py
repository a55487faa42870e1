"""The `servegraph` command through a subprocess: verbs, exit codes, messages."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

import servegraph as sg
from tests import cli_graphs, sites


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ROOT = str(Path(__file__).resolve().parents[2])


def servegraph(*args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servegraph", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_check_ok_and_failing() -> None:
    ok = servegraph("check", "tests.cli_graphs:good")
    assert (ok.returncode, ok.stdout, ok.stderr) == (
        0, "ok: 'diamond' compiles (validate, typecheck, resources, pack, fuse, lower)\n", "")
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
        "servegraph check: error: tests.cli_graphs:not_a_graph is a int, not an sg.Graph or "
        "an sg.App\n")
    debug = servegraph("--debug", "check", "tests.cli_graphs:broken")
    assert debug.returncode == 1 and "Traceback" in debug.stderr


DIAMOND_EXPLAINED = """\
pipeline 'diamond': 6 nodes, 0 stage deployments + driver (4 fused into the driver); passes: \
validate, typecheck, resources, pack, fuse, lower
deployments:
  diamond_driver       driver   1 replica, 0 CPU, max_ongoing_requests=1000, runs Inc, double, \
triple, add in-process
fusion:
  Inc                  fused into diamond_driver: light CPU stage
  double               fused into diamond_driver: light CPU stage
  triple               fused into diamond_driver: light CPU stage
  add                  fused into diamond_driver: light CPU stage
GPU layout: no GPU stages
"""


def test_compile_explains_or_writes_the_plan_json(tmp_path: Path) -> None:
    explained = servegraph("compile", "tests.cli_graphs:good")
    assert (explained.returncode, explained.stdout, explained.stderr) == (
        0, DIAMOND_EXPLAINED, "")
    target = tmp_path / "plan.json"
    written = servegraph("compile", "tests.cli_graphs:good", "-o", str(target))
    assert written.stdout == f"wrote {target}\n"
    plan = json.loads(target.read_text())
    assert [d["name"] for d in plan["deployments"]] == ["Inc", "double", "triple", "add"]
    printed = servegraph("compile", "tests.cli_graphs:good", "--json")
    assert json.loads(printed.stdout) == plan


def test_compile_writes_the_serve_config_for_a_cluster(tmp_path: Path) -> None:
    target = tmp_path / "serve.yaml"
    done = servegraph("compile", "tests.cli_graphs:lengths", "-o", str(target),
                      "--gpus", "2x80GiB")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"wrote {target}\n", "")
    plan = sg.compile(cli_graphs.lengths, cluster=sg.ClusterSpec(gpus=2, gpu_memory="80GiB"))
    assert yaml.safe_load(target.read_text()) == plan.to_serve_config(
        graph="tests.cli_graphs:lengths")
    assert plan.to_serve_config()["applications"][0]["deployments"][0] == {
        "name": "WordLengths", "num_replicas": 2, "ray_actor_options": {"num_gpus": 0.2}}
    # the same cluster from --nodes/--gpus-per-node/--gpu-memory, and the HTTP address
    again = tmp_path / "serve.yml"
    done = servegraph("compile", "tests.cli_graphs:lengths", "-o", str(again), "--nodes", "1",
                      "--gpus-per-node", "2", "--gpu-memory", "80GiB", "--host", "127.0.0.1",
                      "--port", "8123")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(again.read_text()) == plan.to_serve_config(
        graph="tests.cli_graphs:lengths", host="127.0.0.1", port=8123)


def test_compile_writes_a_rayservice(tmp_path: Path) -> None:
    target = tmp_path / "rayservice.yaml"
    done = servegraph("compile", "tests.cli_graphs:lengths", "--gpus", "2x80GiB",
                      "--rayservice", str(target), "--image", "registry.example/search:1",
                      "--ray-version", "2.60.0")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"wrote {target}\n", "")
    plan = sg.compile(cli_graphs.lengths, cluster=sg.ClusterSpec(gpus=2, gpu_memory="80GiB"))
    assert yaml.safe_load(target.read_text()) == plan.to_rayservice(
        graph="tests.cli_graphs:lengths", image="registry.example/search:1",
        ray_version="2.60.0")
    assert "  serveConfigV2: |\n    proxy_location: EveryNode\n" in target.read_text()


def test_check_and_compile_pack_for_the_cluster_flags() -> None:
    ok = servegraph("check", "tests.cli_graphs:lengths", "--gpus", "2", "--gpu-memory", "80GiB")
    assert (ok.returncode, ok.stderr) == (0, "")
    explained = servegraph("compile", "tests.cli_graphs:lengths", "--gpus", "2x80GiB",
                           "--cpus", "8")
    assert explained.stdout.splitlines()[1:] == [
        "cluster: node0: 2 x 80GiB GPU, 8 CPU",
        "deployments:",
        "  WordLengths          class    2 replicas, 1 CPU, 0.2 GPU (from gpu_memory 16GiB of "
        "80GiB)",
        "  lengths_driver       driver   1 replica, 0 CPU, max_ongoing_requests=1000, runs total "
        "in-process",
        "fusion:",
        "  WordLengths          own deployment: needs a GPU (0.2): never fused across a GPU "
        "boundary",
        "  total                fused into lengths_driver: light CPU stage",
        "GPU layout on the cluster: 1 GPU used, lower bound 1",
        "  node0 GPU 0: 40%, 32GiB of 80GiB: WordLengths#0 0.2, WordLengths#1 0.2",
        "  node0 GPU 1: 0%, 0B of 80GiB: free",
    ]


@pytest.mark.parametrize("verb", ["check", "compile", "run", "deploy"])
def test_a_graph_that_does_not_fit_exits_1_with_the_packing_error(verb: str) -> None:
    """Every verb that compiles packs for the cluster flags, and fails before touching Ray."""
    failed = servegraph(verb, "tests.cli_graphs:lengths", "--gpus", "1x24GiB")
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr == (
        f"servegraph {verb}: error: [pack] stage 'WordLengths': cannot place 1 GPU replica(s) "
        "(WordLengths x1) on the cluster (node0: 1 x 24GiB GPU): the plan needs 2 GPUs of "
        "24GiB, the cluster has 1\n"
        "  hint: give the cluster 2 GPUs of 24GiB (--gpus 2x24GiB), or lower num_replicas, "
        "num_gpus or gpu_memory\n")


def test_a_gpu_memory_stage_needs_a_cluster_spec_only_where_replicas_are_placed(
        tmp_path: Path) -> None:
    """check, compile and render take a gpu_memory stage without cluster flags; serving it or
    writing a Serve config needs them, and says so before any Ray starts."""
    unsized = servegraph("check", "tests.cli_graphs:lengths")
    assert (unsized.returncode, unsized.stderr) == (0, "")
    assert unsized.stdout.splitlines()[1] == (
        "note: WordLengths gives gpu_memory only: serving or deploying needs the cluster flags "
        "(e.g. --gpus 2x80GiB) to derive the GPU fraction; running in-process (run --local) "
        "needs none")
    site = sites.at(cli_graphs.__file__, '@sg.deployment(num_replicas=2, gpu_memory="16GiB")')
    for verb, step, flags in (("compile", "serve-config", ["-o", str(tmp_path / "s.yaml")]),
                              ("run", "serve", []), ("deploy", "serve", [])):
        placed = servegraph(verb, "tests.cli_graphs:lengths", *flags)
        assert (placed.returncode, placed.stdout) == (1, "")
        assert placed.stderr == (
            f"servegraph {verb}: error: [{step}] stage 'WordLengths' ({site}): gpu_memory=16GiB "
            "needs the GPUs' memory size to derive a GPU fraction, and no cluster spec was given\n"
            "  hint: placing replicas on GPUs needs their size: sg.compile(graph, cluster="
            "sg.ClusterSpec(gpus=2, gpu_memory='80GiB')) or sg.serve(graph, cluster=...) (CLI: "
            "--gpus 2x80GiB), or declare ray_actor_options={'num_gpus': 0.25}; running "
            "in-process (sg.run_local, servegraph run --local) and tests that fake the stage "
            "need neither\n")


@pytest.mark.parametrize(("flags", "message"), [
    (["--gpus", "4y"], "cannot read --gpus '4y'; write e.g. 4x80GiB or 4"),
    (["--gpus", "4xlots"], "cannot read 'lots' as a size; write bytes or e.g. '6GiB', '512MB'"),
    (["--gpus", "3", "--nodes", "2"], "3 GPUs do not split evenly over 2 nodes; give "
     "--gpus-per-node"),
    (["--gpus", "2x80GiB", "--gpu-memory", "40GiB"],
     "--gpus 2x80GiB disagrees with --gpu-memory 40GiB"),
    (["--gpu-memory", "lots"], "argument --gpu-memory: cannot read 'lots' as a size; write "
     "bytes or e.g. '6GiB', '512MB'"),
    (["--nodes", "0"], "argument --nodes: expected a whole number >= 1, got '0'"),
    (["--gpus-per-node", "two"], "argument --gpus-per-node: expected a whole number >= 0, "
     "got 'two'"),
    (["--cpus", "-1"], "argument --cpus: expected a number of CPUs >= 0, got '-1'"),
    (["--gpu-memory", "80GiB"], "--gpu-memory sizes the cluster's GPUs: give --gpus too "
     "(e.g. --gpus 4 --gpu-memory 80GiB) or --detect-cluster"),
    (["--detect-cluster", "--gpus", "2", "--cpus", "4"], "--detect-cluster reads the cluster "
     "from Ray; drop --gpus, --cpus (or drop --detect-cluster)"),
    (["-o", "serve.txt"], "argument -o/--output: 'serve.txt': write a Serve config (.yaml or "
     ".yml) or the plan (.json)"),
])
def test_bad_flag_values_are_usage_errors(flags: list[str], message: str) -> None:
    bad = servegraph("compile", "tests.cli_graphs:lengths", *flags)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.startswith("usage: servegraph compile ")
    assert bad.stderr.endswith(f"\nservegraph compile: error: {message}\n")


def test_detect_cluster_needs_a_cluster() -> None:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    lost = servegraph("check", "tests.cli_graphs:good", "--detect-cluster", env=env)
    assert (lost.returncode, lost.stderr) == (
        1, "servegraph check: error: no cluster to talk to: pass --address (e.g. "
        "127.0.0.1:6379) or set RAY_ADDRESS\n")


def test_render_text_formats(tmp_path: Path) -> None:
    for suffix, first_line in ((".mmd", "flowchart LR"), (".dot", 'digraph "diamond" {')):
        out = tmp_path / f"diamond{suffix}"
        done = servegraph("render", "tests.cli_graphs:good", "-o", str(out))
        assert done.returncode == 0, done.stderr
        assert out.read_text().splitlines()[0] == first_line


def test_help_lists_every_verb() -> None:
    text = servegraph("--help").stdout
    for verb in ("check", "compile", "render", "run", "deploy", "status", "shutdown", "bench",
                 "profile", "doctor", "top"):
        assert verb in text
    # the description is the docstring's whole user-facing part, not its first line
    assert ("The `servegraph` command (also `python -m servegraph`). Each verb takes "
            "`MODULE:ATTR`, an\n`sg.Graph` or an `sg.App` (or a function returning one) in an "
            "importable module.\n") in text
    assert "  bench    load a running route" in text
    assert "(exit 2), a graph that does not compile or fit exits 1.\n" in text
    assert "The package:" not in text  # the note for whoever edits cli/ stays in the source


def test_run_local_serves_http_and_bench_loads_it() -> None:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "servegraph", "run", "--local", "tests.cli_graphs:good",
         "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline() for _ in range(DIAMOND_EXPLAINED.count("\n") + 1)]
        url = f"http://127.0.0.1:{port}/diamond"
        assert "".join(lines[:-1]) == DIAMOND_EXPLAINED
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


@contextmanager
def ray_head(*flags: str, auth_token: str | None = None
             ) -> Iterator[tuple[str, dict[str, str]]]:
    """`ray start --head --block` in a subprocess on free ports; yields its GCS address and the
    environment to talk to it with. Stopped on the way out, even on failure, by terminating
    that process (never `ray stop`, which stops every Ray on the machine, this session's own
    included). Workers import the test modules through PYTHONPATH. With `auth_token`, the head
    requires that token (and the environment yielded sends it)."""
    gcs_port = _free_port()
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    # Ray 2.60 turns on token authentication for `ray start`; the token file in ~/.ray is
    # shared with the other Ray instances of this test run, so this private cluster opts out.
    # Without draining on SIGTERM the head stops at once rather than after 30 s.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    if auth_token is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=auth_token)
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={gcs_port}", "--num-cpus=8",
         f"--ray-client-server-port={_free_port()}", "--disable-usage-stats", *flags],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert head.stdout is not None
        started: list[str] = []
        while not started or ("Ray runtime started" not in started[-1] and started[-1]):
            started.append(head.stdout.readline())
        assert "Ray runtime started" in started[-1], "".join(started)
        yield f"127.0.0.1:{gcs_port}", env
    finally:
        head.terminate()
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=60)


@pytest.mark.ray
def test_deploy_status_shutdown_on_a_real_ray_head(tmp_path: Path) -> None:
    """The CLI deploys onto a `ray start` head, lists it, serves HTTP from it and deletes it."""
    http_port = _free_port()
    with ray_head("--include-dashboard=false") as (address, env):
        deployed = servegraph("deploy", "tests.cli_graphs:good", "--address", address,
                              "--port", str(http_port), env=env)
        assert deployed.returncode == 0, deployed.stderr
        url = f"http://127.0.0.1:{http_port}/diamond"
        assert deployed.stdout == DIAMOND_EXPLAINED + f"deployed 'diamond': POST JSON to {url}\n"
        assert httpx.post(url, json={"x": 1}, timeout=60).json() == 10

        status = servegraph("status", "--address", address, env=env)
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert lines[0] == "diamond  RUNNING"
        assert sorted(line.split()[0] for line in lines[1:]) == ["diamond_driver"]  # fused
        assert all(line.split()[1:] == ["HEALTHY", "RUNNING", "1"] for line in lines[1:])
        drawn = tmp_path / "live.dot"
        rendered = servegraph("status", "diamond", "--address", address, "--render",
                              str(drawn), env=env)
        assert rendered.returncode == 0, rendered.stderr
        assert rendered.stdout.splitlines()[-1] == f"wrote {drawn}"
        assert drawn.read_text().count('fillcolor="#d9f2d9"') == 1  # the driver, all fused
        assert ('label="diamond_driver · 1 replica · 0 CPU · fused: Inc, double, triple, add · '
                'HEALTHY: RUNNING 1"') in drawn.read_text()
        benched = servegraph("bench", "diamond", "--address", address, "--payload",
                             '{"x": 1}', "-n", "4", "-c", "2", env=env)  # by its name
        assert benched.returncode == 0, benched.stderr
        assert benched.stdout.startswith(f"{url}: 4 requests at concurrency 2 in ")
        assert benched.stdout.splitlines()[-1] == "  responses: 200: 4"
        missing = servegraph("status", "nope", "--address", address, env=env)
        assert missing.stderr == ("servegraph status: error: no Serve application named "
                                  "'nope' (running: diamond)\n")

        shut = servegraph("shutdown", "diamond", "--address", address, env=env)
        assert (shut.returncode, shut.stdout) == (0, "deleted 'diamond'\n")
        after = servegraph("status", "--address", address, env=env)
        assert after.stdout == "no Serve applications\n"


@pytest.mark.ray
def test_serve_deploy_runs_the_compiled_config(tmp_path: Path) -> None:
    """Ray's own `serve deploy` takes the YAML `servegraph compile` wrote, through the
    dashboard's REST API, and the application builder recompiles the graph for its cluster."""
    dashboard, http_port = _free_port(), _free_port()
    config = tmp_path / "serve.yaml"
    with ray_head("--num-gpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={dashboard}",
                  f"--dashboard-agent-listen-port={_free_port()}") as (address, env):
        detected = servegraph("compile", "tests.cli_graphs:lengths", "--detect-cluster",
                              "--address", address, "--gpu-memory", "80GiB", env=env)
        assert detected.returncode == 0, detected.stderr
        assert re.fullmatch(r"cluster: [\d.]+-[0-9a-f]{6}: 2 x 80GiB GPU, 8 CPU",
                            detected.stdout.splitlines()[1]), detected.stdout

        written = servegraph("compile", "tests.cli_graphs:lengths", "-o", str(config),
                             "--gpus", "2x80GiB", "--host", "127.0.0.1", "--port",
                             str(http_port))
        assert written.returncode == 0, written.stderr
        rest = f"http://127.0.0.1:{dashboard}"
        serve_bin = os.path.join(os.path.dirname(sys.executable), "serve")
        deployed = subprocess.run([serve_bin, "deploy", str(config), "--address", rest],
                                  cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=300, check=False)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert wait_for_application(rest, "lengths") == ("RUNNING", "")

        url = f"http://127.0.0.1:{http_port}/lengths"
        answer = httpx.post(url, json={"text": "a bb ccc dddd"}, timeout=60)
        assert (answer.status_code, answer.json()) == (200, 10)
        served = httpx.get(f"{url}/-/plan", timeout=60).json()
        assert served["cluster"] == sg.ClusterSpec(gpus=2, gpu_memory="80GiB").model_dump(
            mode="json")
        assert served["deployments"][0]["options"]["ray_actor_options"]["num_gpus"] == 0.2


def wait_for_application(rest: str, name: str, *, deadline_s: float = 300.0
                         ) -> tuple[str, str]:
    """Poll the dashboard's Serve REST API until application `name` is past DEPLOYING or the
    deadline passes: its (status, message). A cluster in another process offers no event."""
    deadline = time.monotonic() + deadline_s
    status, message = "NOT_STARTED", ""
    while time.monotonic() < deadline:
        applications = httpx.get(f"{rest}/api/serve/applications/", timeout=60).json()
        app = (applications.get("applications") or {}).get(name, {})
        status, message = app.get("status", "NOT_STARTED"), app.get("message", "")
        if status not in ("NOT_STARTED", "DEPLOYING"):
            break
        time.sleep(1)
    return status, message


def test_cluster_verbs_need_an_address() -> None:
    env_free = servegraph("status")
    assert env_free.returncode == 1
    assert env_free.stderr == ("servegraph status: error: no cluster to talk to: pass "
                               "--address (e.g. 127.0.0.1:6379) or set RAY_ADDRESS\n")

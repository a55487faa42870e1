"""The `servegraph` command against a cluster started with `ray start --head`, in subprocesses:
a cluster that wants an auth token says so in one line, at once; `run` logs nothing per request
unless asked for Serve's access log, whose lines name the stage's method."""

from __future__ import annotations

import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.cli.test_cli import ROOT, ray_head, servegraph

AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.ray
def test_a_cluster_that_wants_a_token_says_so_in_one_line_at_once() -> None:
    with ray_head("--include-dashboard=false", auth_token=secrets.token_hex(32)) as (
            address, env):
        tokenless = {key: value for key, value in env.items() if key not in AUTH_VARIABLES}
        started = time.monotonic()
        refused = servegraph("status", "--address", address, env=tokenless)
        assert time.monotonic() - started < 15  # was: 20 s of retries, a line each
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr == (
            f"servegraph status: error: cannot connect to Ray at {address}: the Ray cluster at "
            f"{address} requires an auth token (`ray start` turns token authentication on "
            "where a token exists): export RAY_AUTH_MODE=token, with the token in "
            "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (`ray get-auth-token` on "
            "the head prints it), or start the cluster with RAY_AUTH_MODE=disabled\n")
        ran = servegraph("run", "tests.cli_graphs:good", "--address", address, env=tokenless)
        assert (ran.returncode, ran.stdout) == (1, "")  # was: a traceback
        assert ran.stderr == refused.stderr.replace("servegraph status:", "servegraph run:")

        wrong = servegraph("status", "--address", address,
                           env={**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)})
        assert (wrong.returncode, wrong.stderr) == (
            1, f"servegraph status: error: cannot connect to Ray at {address}: the Ray cluster "
            f"at {address} refused this process's auth token (RAY_AUTH_MODE=token): use the "
            "cluster's token, from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token "
            "(`ray get-auth-token` on the head prints it)\n")
        joined = servegraph("status", "--address", address, env=env)
        assert (joined.returncode, joined.stdout, joined.stderr) == (
            0, "no Serve applications\n", "")


REQUESTS = 20
ACCESS_LINE = re.compile(r" -- (CALL|POST) \S+ \S+ [\d.]+ms")  # Serve's, per request or call


@pytest.mark.ray
def test_run_logs_each_request_only_when_asked(tmp_path: Path) -> None:
    """On a cluster with Serve's defaults (replicas log to stderr, which `run` shows), `run`
    prints no line per request; `--access-log` prints Serve's, naming the stage's method (a
    method by the name of Serve's health hook is called as `__call__`)."""
    with ray_head("--include-dashboard=false") as (address, env):
        logged = run_requests(tmp_path / "access.log", address, env, "--access-log")
        assert logged.count("CALL shout OK") == REQUESTS, logged
        assert logged.count("CALL __call__ OK") == REQUESTS
        assert logged.count("POST /loud 200") == REQUESTS
        quiet = run_requests(tmp_path / "quiet.log", address, env)
        assert [line for line in quiet.splitlines() if ACCESS_LINE.search(line)] == []


def run_requests(log: Path, address: str, env: dict[str, str], *flags: str) -> str:
    """`servegraph run` the `loud` graph on the cluster, POST it `REQUESTS` requests, stop it
    with Ctrl-C: all it printed."""
    port = free_port()
    with open(log, "w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "servegraph", "run", "tests.cli_graphs:loud", "--address",
             address, "--port", str(port), *flags], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: "serving 'loud'" in log.read_text() or run.poll() is not None,
                     deadline_s=240)
            assert run.poll() is None, log.read_text()
            # the first run's port: Serve keeps running on the cluster after it
            url = re.findall(r"serving 'loud': POST JSON to (\S+) ", log.read_text())[0]
            for index in range(REQUESTS):
                answer = httpx.post(url, json={"text": "ab" * index}, timeout=60)
                assert (answer.status_code, answer.json()) == (200, 2 * index)
            if flags:
                wait_for(lambda: log.read_text().count("CALL shout") >= REQUESTS, deadline_s=60)
            else:  # as long as logged lines take to show, had there been any
                time.sleep(3)
        finally:
            run.send_signal(signal.SIGINT)
            try:
                run.wait(timeout=120)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait(timeout=60)
    return log.read_text()


def wait_for(condition: Callable[[], bool], *, deadline_s: float) -> None:
    """Poll `condition` (another process's output: no event to wait on) until the deadline."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up after {deadline_s} s"
        time.sleep(0.2)

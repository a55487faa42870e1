"""`servegraph run` on its embedded Ray starts Ray's dashboard and prints its URL, unless
`--no-dashboard`. Each test runs the command as a subprocess and stops it on the way out."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.cli.test_cli import ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(*flags: str) -> Iterator[list[str]]:
    """`servegraph run tests.cli_graphs:good` on an embedded Ray (no RAY_ADDRESS), until it
    says it serves; yields what it printed. Stopped (SIGTERM, as Ctrl-C) even on failure."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    server = subprocess.Popen(
        [sys.executable, "-m", "servegraph", "run", "tests.cli_graphs:good", "--port",
         str(free_port()), *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stderr is not None
        lines = [server.stdout.readline()]
        while lines[-1] and not lines[-1].startswith("serving "):  # or the end: it failed
            lines.append(server.stdout.readline())
        assert lines[-1], f"run ended: {server.wait(timeout=60)}\n{server.stderr.read()}"
        yield lines
    finally:
        server.terminate()
        try:
            server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate(timeout=30)


@pytest.mark.ray
def test_run_starts_rays_dashboard_and_prints_where() -> None:
    with running() as lines:
        shown = [line for line in lines if line.startswith("Ray dashboard: ")]
        assert len(shown) == 1 and lines[-2] == shown[0]
        url = shown[0].removeprefix("Ray dashboard: ").strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        assert httpx.get(url, timeout=30).status_code == 200


@pytest.mark.ray
def test_no_dashboard_prints_none() -> None:
    with running("--no-dashboard") as lines:
        assert lines[-1].startswith("serving 'diamond': POST JSON to ")
        assert not [line for line in lines if "dashboard" in line.lower()]

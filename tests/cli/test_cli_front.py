"""The CLI on an `sg.App`: `check`, `compile` (explain, Serve config, a `.proto` per graph)
and `run --local` serving the user's FastAPI app with the graphs mounted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from servegraph.pipelines.front_door import API_KEY
from tests.cli.test_cli import ROOT, _free_port, servegraph

APP = "servegraph.pipelines.front_door:app"


def test_check_and_compile_an_app(tmp_path: Path) -> None:
    ok = servegraph("check", APP)
    assert (ok.returncode, ok.stdout) == (
        0, "ok: app 'front' (3 graphs) compiles (validate, typecheck, resources, pack, fuse, "
        "lower)\n")
    explained = servegraph("compile", APP)
    assert explained.stdout.startswith(
        "app 'front': 3 graphs, 1 deployments + ingress front_driver\n")
    written = servegraph("compile", APP, "-o", str(tmp_path / "serve.yaml"),
                         "--proto", str(tmp_path / "front.proto"))
    assert written.returncode == 0, written.stderr
    assert written.stdout.splitlines() == [
        f"wrote {tmp_path / 'serve.yaml'}", f"wrote {tmp_path / 'front_words.proto'}",
        f"wrote {tmp_path / 'front_digits.proto'}", f"wrote {tmp_path / 'front_pids.proto'}"]
    [app] = yaml.safe_load((tmp_path / "serve.yaml").read_text())["applications"]
    assert app["args"] == {"app": APP}
    assert "rpc DigitsCall(Text)" in (tmp_path / "front_digits.proto").read_text()


def test_run_local_serves_the_apps_front_door() -> None:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "servegraph", "run", "--local", APP, "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        announced = ""
        while "Ctrl-C stops" not in announced:
            line = server.stdout.readline()
            assert line, server.stderr.read() if server.stderr else "no output"
            announced = line
        base = f"http://127.0.0.1:{port}"
        assert announced == (f"serving 'front' in-process (no Ray): POST JSON to {base}/words;"
                             f" POST JSON to {base}/digits (Ctrl-C stops)\n")
        # uvicorn listens just after the announcement: connecting is retried, with backoff
        with httpx.Client(base_url=base, timeout=30,
                          transport=httpx.HTTPTransport(retries=6)) as http:
            health = http.get("/health")
            assert health.json() == {"status": "ok"}
            assert http.post("/words", json={"text": "a b"}).status_code == 401
            assert http.post("/words", json={"text": "a b"},
                             headers={"x-api-key": API_KEY}).json() == {"words": 2}
    finally:
        server.terminate()
        server.wait(timeout=30)

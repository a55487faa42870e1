"""The pipeline the reliability suite serves (importable, so Serve replicas load it), the
requests it sends (good ones with their answers, bad ones that must get a 4xx), and the
helpers that find and kill a replica, wait for Serve to restore it, and run the load from a
second process (`python -m servegraph bench --cases`)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import servegraph as sg

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-live-0123456789abcdefABCDEF0123"
UNLUCKY = 13  # `prep` raises for this x: that request alone fails, with a 500 naming it
FAST = {"health_check_period_s": 1, "health_check_timeout_s": 5,
        "graceful_shutdown_wait_loop_s": 0.5, "graceful_shutdown_timeout_s": 10}


class Job(BaseModel):
    x: int
    word: str


@sg.deployment(fuse=False, **FAST)
def prep(x: int) -> int:
    if x == UNLUCKY:
        raise ValueError(f"x={x} is unlucky")
    return x + 1


@sg.deployment(fuse=False, num_replicas=2, max_ongoing_requests=64, **FAST)
class Middle:
    """The middle stage: two replicas, one of which the fault test kills."""

    def __init__(self, api_key: str, version: str = "v1") -> None:
        self.api_key = api_key
        self.version = version

    async def __call__(self, n: int, word: str) -> dict[str, Any]:
        await asyncio.sleep(0.001)
        return {"n": 2 * n, "word": word.upper()}


@sg.deployment(fuse=False, **FAST)
def finish(middle: dict[str, Any], word: str) -> dict[str, Any]:
    return {**middle, "length": len(word)}


def graph(version: str = "v1") -> sg.Graph:
    with sg.InputNode(Job) as inp:
        n = prep.bind(inp.x)
        middle = Middle.bind(SECRET, version=version).__call__.bind(n, inp.word)
        out = finish.bind(middle, inp.word)
    return sg.Graph(out, name="reliable")


@sg.deployment
class Tally:
    """A light stage with state, fused into the driver: each driver replica builds its own
    (so `calls` counts that replica's calls only)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, middle: dict[str, Any], word: str) -> dict[str, Any]:
        self.calls += 1
        return {**middle, "length": len(word)}


SCALED_DRIVER = {"num_replicas": 2}


def scaled_graph() -> sg.Graph:
    """`graph()`'s answers from two driver replicas, its last stage fused into them."""
    with sg.InputNode(Job) as inp:
        n = prep.bind(inp.x)
        middle = Middle.bind(SECRET).__call__.bind(n, inp.word)
        out = Tally.bind().__call__.bind(middle, inp.word)
    return sg.Graph(out, name="scaled", driver=SCALED_DRIVER)


def expected(x: int, word: str) -> dict[str, Any]:
    return {"n": 2 * (x + 1), "word": word.upper(), "length": len(word)}


def cases(*, bad_share: float = 0.1, size: int = 100, unlucky: bool = False
          ) -> list[dict[str, Any]]:
    """`size` requests, `bad_share` of them bad (malformed JSON, wrong types, missing fields,
    a pickle), spread evenly; with `unlucky`, one good-looking request whose stage raises."""
    bad_kinds: list[dict[str, Any]] = [
        {"raw": "{not json", "bad": True},
        {"body": {"x": "seven", "word": "w"}, "bad": True},
        {"body": {"word": "no x"}, "bad": True},
        {"body": [1, 2, 3], "bad": True},
        {"raw": "\x80\x04\x95pickle", "bad": True},
    ]
    every = max(1, round(1 / bad_share)) if bad_share else size + 1
    out: list[dict[str, Any]] = []
    for index in range(size):
        if index % every == every - 1:
            out.append(bad_kinds[(index // every) % len(bad_kinds)])
        else:
            word = f"w{index % 7}"
            x = index if index != UNLUCKY else UNLUCKY + 1
            out.append({"body": {"x": x, "word": word}, "expect": expected(x, word)})
    if unlucky:
        out[0] = {"body": {"x": UNLUCKY, "word": "u"}, "expect": expected(UNLUCKY, "u")}
    return out


def write_cases(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@contextmanager
def bench(url: str, cases_file: Path, summary: Path, *, requests: int, concurrency: int,
          timeout_s: float = 30.0, progress: int = 0) -> Iterator[subprocess.Popen[str]]:
    """`python -m servegraph bench --cases` in a second process; killed on the way out if it
    still runs (a failed test leaves nothing behind)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "servegraph", "bench", url, "--cases", str(cases_file),
         "-n", str(requests), "-c", str(concurrency), "--timeout", str(timeout_s),
         "--json", str(summary), "--progress", str(progress)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def wait_answered(process: subprocess.Popen[str], count: int) -> None:
    """Block until the load process has had `count` answers (its `answered N` lines)."""
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("answered ") and int(line.split()[1]) >= count:
            return
    raise AssertionError(f"the load ended before {count} answers")


def finish_bench(process: subprocess.Popen[str], summary: Path,
                 timeout_s: float = 300.0) -> dict[str, Any]:
    _, err = process.communicate(timeout=timeout_s)
    assert summary.exists(), f"bench wrote no summary (exit {process.returncode}): {err}"
    return json.loads(summary.read_text())


def run_bench(url: str, cases_file: Path, summary: Path, **options: Any) -> dict[str, Any]:
    with bench(url, cases_file, summary, **options) as process:
        return finish_bench(process, summary)


def replica_actors(app: str, deployment: str) -> list[str]:
    """The names of a deployment's live replica actors (namespace `serve`)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return sorted(entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
                  if entry["name"].startswith(prefix))


def kill_replica(app: str, deployment: str) -> str:
    """`ray.kill` one replica actor of the deployment; returns its name."""
    import ray

    name = replica_actors(app, deployment)[0]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return name


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return 0
    return int(status.deployments[deployment].replica_states.get("RUNNING", 0))


def until(ask: Callable[[], Any], done: Callable[[Any], bool], what: str) -> Any:
    """Ask again until the answer is `done` (Serve gives no event for a rollout, a
    replacement or a replica's cancelled call), for at most 60 s; the last answer."""
    deadline = time.monotonic() + 60
    while not done(answer := ask()):
        assert time.monotonic() < deadline, f"{what}: not within 60 s, last {answer!r}"
        time.sleep(0.2)
    return answer


def wait_until(ready: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    """Seconds until `ready()` holds, checked every 0.1 s (Serve's state has no event to
    wait on); fails after `timeout_s`."""
    started = time.perf_counter()
    while not ready():
        if time.perf_counter() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.1)
    return time.perf_counter() - started


def recovered(app: str, deployment: str, killed: str, replicas: int) -> Callable[[], bool]:
    """A replacement replica is up: the killed one gone, `replicas` running again."""

    def ready() -> bool:
        names = replica_actors(app, deployment)
        return (killed not in names and len(names) >= replicas
                and running_replicas(app, deployment) >= replicas)

    return ready


@sg.deployment(fuse=False)
async def slow(x: int) -> int:
    await asyncio.sleep(0.5)
    return x


def queued_plan(*, max_queued: int, retry_after_s: float) -> Any:
    """A one-stage plan whose driver takes one request at a time and queues `max_queued`;
    `backpressure_config` makes Serve's 503 carry `Retry-After`."""
    with sg.InputNode() as inp:
        out = slow.bind(inp.x)
    plan = sg.compile(sg.Graph(out, name="queued"))
    options = {**plan.driver.options, "max_ongoing_requests": 1,
               "max_queued_requests": max_queued,
               "backpressure_config": {"status_code": 503, "retry_after_s": retry_after_s}}
    return plan.model_copy(update={"driver": plan.driver.model_copy(update={
        "options": options})})


# --- a stage whose replica dies on one input (the dead-replica naming test) -----------------

DIE = -1  # `doomed` ends its own process for this x, as a crash or an OOM kill would


@sg.deployment(fuse=False, **FAST)
def doomed(x: int) -> int:
    if x == DIE:
        import os

        os._exit(1)
    return x + 1


@sg.deployment(fuse=False, **FAST)
def after(n: int) -> int:
    return 2 * n


def doomed_graph(downstream: bool) -> sg.Graph:
    """`doomed` alone (the driver awaits its call), or feeding `after` (the driver passes the
    call on unawaited, so `after`'s call is the one that fails)."""
    with sg.InputNode() as inp:
        out = doomed.bind(inp.x)
        if downstream:
            out = after.bind(out)
    return sg.Graph(out, name="doomed_then_after" if downstream else "doomed_alone")

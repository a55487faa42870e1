"""The long reliability run (the CI version: tests/serving/test_reliability.py). Serves the
reliability pipeline (prep -> Middle x2 -> finish, each its own deployment) on an embedded
Ray Serve, then loads it over HTTP from a second process (`python -m servegraph bench
--cases`), 10% bad requests mixed in:

1. steady load: N requests at concurrency C;
2. a Middle replica killed (`ray.kill`) mid-load: time until Serve restores it;
3. the driver replica killed mid-load: the same;
4. a rolling update (every stage redeployed) mid-load.

Prints a Markdown table (README, "Reliability") and writes the summaries as JSON.
Usage: python benchmarks/bench_reliability.py [-n 10000] [-c 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test stages, importable by Serve's workers too

import servegraph as sg  # noqa: E402
from tests import reliability_stages as rs  # noqa: E402

APP = "reliable"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def under_fault(url: str, cases: Path, work: Path, name: str, requests: int,
                concurrency: int, fault: Any) -> dict[str, Any]:
    summary_path = work / f"{name}.json"
    with rs.bench(url, cases, summary_path, requests=requests, concurrency=concurrency,
                  timeout_s=60, progress=100) as load:
        rs.wait_answered(load, requests // 5)
        recovery_s = fault()
        summary = rs.finish_bench(load, summary_path, timeout_s=1800)
    summary["recovery_s"] = recovery_s
    return summary


def kill(deployment: str) -> Any:
    def fault() -> float:
        replicas = len(rs.replica_actors(APP, deployment))
        killed = rs.kill_replica(APP, deployment)
        return rs.wait_until(rs.recovered(APP, deployment, killed, replicas), timeout_s=300,
                             what=f"{deployment} restored")
    return fault


def rolling_update() -> float | None:
    sg.serve(rs.graph(version="v2"), name=APP, route_prefix=f"/{APP}")
    return None


def row(name: str, s: dict[str, Any]) -> str:
    classes = s["classes"]
    failed = s["good"] - s["correct"]
    recovery = f"{s['recovery_s']:.1f} s" if s.get("recovery_s") is not None else "-"
    return (f"| {name} | {s['requests']} | {s['concurrency']} | {s['bad'] / s['requests']:.0%} "
            f"| {s['answered']} | {s['lost']} | {s['correct']}/{s['good']} ({failed} failed) "
            f"| {classes.get('4xx', 0)} | {classes.get('5xx', 0)} | {s['p50_ms']:.1f} "
            f"| {s['p99_ms']:.1f} | {recovery} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=10_000)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("--fault-requests", type=int, default=3000)
    parser.add_argument("--json", help="write every summary here")
    args = parser.parse_args()

    port = free_port()
    handle = sg.serve(rs.graph(), name=APP, route_prefix=f"/{APP}", http_port=port)
    url = f"http://127.0.0.1:{port}/{APP}"
    results: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            cases = rs.write_cases(work / "cases.jsonl", rs.cases(bad_share=0.1, size=100))
            results["steady load"] = rs.run_bench(
                url, cases, work / "steady.json", requests=args.requests,
                concurrency=args.concurrency, timeout_s=60)
            for name, fault in [("Middle replica killed", kill("Middle")),
                                ("driver replica killed", kill(f"{APP}_driver")),
                                ("rolling update", rolling_update)]:
                results[name] = under_fault(url, cases, work, name.split()[0].lower(),
                                            args.fault_requests, args.concurrency, fault)
            results["after the faults"] = rs.run_bench(
                url, cases, work / "after.json", requests=1000,
                concurrency=args.concurrency, timeout_s=60)
    finally:
        handle.shutdown()
    print("| run | requests | concurrency | bad share | answered | lost | good correct "
          "| 4xx | 5xx | p50 ms | p99 ms | replica restored in |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, summary in results.items():
        print(row(name, summary))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(s["lost"] == 0 for s in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`servegraph profile`: a JSON-lines file of payloads in, a Profile file out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from servegraph.serving.profile import Profile
from tests import profile_stages

ROOT = str(Path(__file__).resolve().parents[2])


def servegraph(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servegraph", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_profile_writes_a_profile(tmp_path: Path) -> None:
    payloads = tmp_path / "payloads.jsonl"
    payloads.write_text("\n".join(json.dumps(p) for p in profile_stages.PAYLOADS) + "\n\n")
    out = tmp_path / "profile.json"
    done = servegraph("profile", "tests.profile_stages:graph", "--payloads", str(payloads),
                      "-o", str(out), "--budget-s", "0.2")
    assert done.returncode == 0, done.stderr
    prof = Profile.model_validate_json(out.read_text())
    assert prof.pipeline == "weights" and prof.payloads == 2 and prof.budget_s == 0.2
    assert [(s.label, [t.batch_size for t in s.service_ms]) for s in prof.stages] == [
        ("weigh", [1]), ("Rounder.round", [1, 2, 4])]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["weigh", "Rounder.round"]
    assert lines[2:] == [f"wrote {out}"]
    assert [line.split(" (")[0] for line in done.stderr.splitlines()] == [
        "profiling weigh", "profiling Rounder.round"]


def test_profile_refuses_bad_payloads_and_budgets(tmp_path: Path) -> None:
    payloads = tmp_path / "payloads.jsonl"
    payloads.write_text('{"words": ["a"], "weight": 1}\nnot json\n')
    bad = servegraph("profile", "tests.profile_stages:graph", "--payloads", str(payloads),
                     "-o", str(tmp_path / "p.json"))
    assert bad.returncode == 1
    assert bad.stderr.startswith(f"servegraph profile: error: {payloads}:2: not JSON: ")
    budget = servegraph("profile", "tests.profile_stages:graph", "--payloads", str(payloads),
                        "-o", str(tmp_path / "p.json"), "--budget-s", "0")
    assert budget.returncode == 2
    assert "expected a number of seconds > 0, got '0'" in budget.stderr
    payloads.write_text('{"words": ["a"], "weight": 1}\n')
    cpus = servegraph("profile", "tests.profile_stages:graph", "--payloads", str(payloads),
                      "-o", str(tmp_path / "p.json"), "--cpus", "2")
    assert (cpus.returncode, cpus.stderr.strip()) == (1, (
        "servegraph profile: error: --cpus needs --address: here the profile sweeps this "
        "machine's CPUs"))

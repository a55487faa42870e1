"""`servegraph compile --profile p.json [--target-rps N [--target-p99-ms M]]`: a plan sized
from a profile, explained with its predictions; a target out of reach is the capacity error."""

from __future__ import annotations

from pathlib import Path

import pytest

import servegraph as sg
from servegraph.compiler.explain import capacity_lines
from tests.cli.test_cli_profile import servegraph
from tests.compiler.test_capacity import diamond_profile
from tests.compiler.test_capacity_app import app_profiles, two_graph_app
from tests.stages import diamond

DIAMOND = "tests.stages:diamond"
APP = "tests.compiler.test_capacity_app:two_graph_app"


def _profile(tmp_path: Path) -> str:
    path = tmp_path / "profile.json"
    path.write_text(diamond_profile().model_dump_json())
    return str(path)


def test_compile_plans_for_the_most_throughput(tmp_path: Path) -> None:
    done = servegraph("compile", DIAMOND, "--cpus", "4", "--profile", _profile(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "capacity (planned from a profile for the most throughput on 4 CPUs):" in done.stdout
    assert "bottleneck: the cluster's CPUs" in done.stdout


def test_compile_plans_for_a_target(tmp_path: Path) -> None:
    """The CLI prints what `sg.compile` plans (the model's fitted constants as they are: the
    hand calculations are in tests/compiler/test_capacity.py, with them pinned)."""
    done = servegraph("compile", DIAMOND, "--cpus", "16", "--profile", _profile(tmp_path),
                      "--target-rps", "150", "--target-p99-ms", "500")
    assert done.returncode == 0, done.stderr
    assert "for 150 req/s, p99 <= 500 ms on 16 CPUs" in done.stdout
    plan = sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=16), profile=diamond_profile(),
                      target=sg.Target(rps=150, p99_ms=500))
    assert "\n".join(capacity_lines(plan)) in done.stdout


def test_compile_refuses_what_the_cluster_cannot_serve(tmp_path: Path) -> None:
    done = servegraph("compile", DIAMOND, "--cpus", "2", "--profile", _profile(tmp_path),
                      "--target-rps", "300")
    assert done.returncode != 0
    with pytest.raises(sg.CapacityError) as caught:
        sg.compile(diamond(), cluster=sg.ClusterSpec(cpus=2), profile=diamond_profile(),
                   target=sg.Target(rps=300))
    assert done.stderr == f"servegraph compile: error: {caught.value}\n"
    done = servegraph("compile", DIAMOND, "--target-rps", "300")
    assert done.returncode != 0
    assert "--target-rps and --target-p99-ms need --profile FILE.json" in done.stderr
    missing = servegraph("compile", DIAMOND, "--profile", str(tmp_path / "nope.json"))
    assert missing.returncode != 0 and "cannot read" in missing.stderr


def test_compile_plans_an_app_graph_by_graph(tmp_path: Path) -> None:
    """An sg.App: a profile per graph (each names its graph) and `--target-rps GRAPH=N`."""
    paths = []
    for profile in app_profiles():
        path = tmp_path / f"{profile.pipeline}.json"
        path.write_text(profile.model_dump_json())
        paths += ["--profile", str(path)]
    done = servegraph("compile", APP, "--cpus", "16", *paths, "--target-rps", "a=100",
                      "--target-rps", "b=200", "--target-p99-ms", "b=900")
    assert done.returncode == 0, done.stderr
    plan = sg.compile(two_graph_app(), cluster=sg.ClusterSpec(cpus=16),
                      profile=app_profiles(),
                      target={"a": sg.Target(rps=100), "b": sg.Target(rps=200, p99_ms=900)})
    assert done.stdout == plan.explain() + "\n"
    assert "for 200 req/s, p99 <= 900 ms" in done.stdout
    done = servegraph("compile", APP, *paths, "--target-rps", "200")
    assert done.returncode != 0
    assert "give each graph's target as --target-rps GRAPH=N" in done.stderr
    done = servegraph("compile", APP, *paths, "--target-rps", "a=1", "--target-p99-ms", "b=9")
    assert done.returncode != 0
    assert "--target-p99-ms b=... needs --target-rps b=..." in done.stderr


def test_profile_an_apps_graph_then_plan_it(tmp_path: Path) -> None:
    """`servegraph profile` takes an sg.App's graph by `--graph`; the profile names that graph,
    and `compile --profile ... --target-rps GRAPH=N` plans it within the app."""
    payloads = tmp_path / "payloads.jsonl"
    payloads.write_text("1\n2\n")
    out = tmp_path / "b.json"
    done = servegraph("profile", APP, "--graph", "b", "--payloads", str(payloads), "-o",
                      str(out), "--budget-s", "0.2")
    assert done.returncode == 0, done.stderr
    profile = sg.Profile.model_validate_json(out.read_text())
    assert (profile.pipeline, [each.label for each in profile.stages]) == (
        "b", ["Shared.__call__"])
    done = servegraph("compile", APP, "--cpus", "4", "--profile", str(out), "--target-rps",
                      "b=20")
    assert done.returncode == 0, done.stderr
    assert "capacity (planned from a profile for 20 req/s on" in done.stdout
    for flags, error in [([], "is an sg.App: profile one of its graphs at a time with --graph "
                          "NAME (its graphs: a, b)"),
                         (["--graph", "c"], "has no graph 'c' (its graphs: a, b)")]:
        done = servegraph("profile", APP, *flags, "--payloads", str(payloads), "-o",
                          str(tmp_path / "x.json"))
        assert done.returncode != 0 and error in done.stderr
    done = servegraph("profile", DIAMOND, "--graph", "b", "--payloads", str(payloads), "-o",
                      str(tmp_path / "x.json"))
    assert done.returncode != 0 and "--graph picks a graph of an sg.App" in done.stderr
    with pytest.raises(sg.CompileError, match=r"sg.profile measures one graph, and the app "
                       r"'both' holds 2"):
        sg.profile(two_graph_app(), [1])

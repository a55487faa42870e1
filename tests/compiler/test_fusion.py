"""Stage fusion: the fuse pass's decisions and the plan that records them; identical results
fused and unfused on the local executor and on Ray Serve (example pipelines and random graphs);
fused stages drawn inside the driver's deployment."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import servegraph as sg
from servegraph.visualize.render_mermaid import to_mermaid
from tests import fusion_stages as fs
from tests.stages import EXPECTED, PAYLOAD, diamond, scoring

MIXED_PAYLOAD = {"text": "a bb ccc", "first": "zz"}
MIXED_EXPECTED = {"answer": "2|[1, 2, 3]|['A', 'BB', 'CCC']|[2.0, 122.0]",
                  "words": ["a", "bb", "ccc"]}


def fused(plan: sg.CompiledPipeline) -> dict[str, str | None]:
    return {stage.name: stage.fused_into for stage in plan.deployments}


def reasons(plan: sg.CompiledPipeline) -> dict[str, str]:
    return {stage.name: stage.fusion for stage in plan.deployments}


def test_light_stages_are_fused_into_the_driver_and_the_plan_says_why() -> None:
    plan = sg.compile(diamond())
    assert "fuse" in plan.passes and plan.passes.index("fuse") == plan.passes.index("pack") + 1
    assert fused(plan) == dict.fromkeys(["Inc", "double", "triple", "add"], "diamond_driver")
    assert plan.served() == [] and [s.name for s in plan.fused()] == ["Inc", "double",
                                                                       "triple", "add"]
    assert set(reasons(plan).values()) == {"light CPU stage"}
    explained = plan.explain()
    assert "runs Inc, double, triple, add in-process" in explained
    assert "  add                  fused into diamond_driver: light CPU stage" in explained
    again = sg.CompiledPipeline.model_validate_json(plan.model_dump_json())
    assert again.model_dump() == plan.model_dump() and fused(again) == fused(plan)
    assert again.fuse


def test_each_never_fuse_rule_keeps_its_stage_a_deployment() -> None:
    plan = sg.compile(fs.mixed())
    assert fused(plan) == {"tokenize": "mixed_driver", "Embed": None, "lengths": "mixed_driver",
                           "shout": "mixed_driver", "vote": None, "Embed_1": None,
                           "format_answer": "mixed_driver"}
    why = reasons(plan)
    assert why["Embed"] == "needs a GPU (0.25): never fused across a GPU boundary"
    assert why["vote"] == "autoscaled: scales on its own"
    streams = sg.compile(fs.spelled())
    assert reasons(streams) == {"tokenize": "light CPU stage", "light_join": "light CPU stage",
                                "spell": "streams its output", "collect": "reads a stream"}
    with sg.InputNode() as inp:
        out = fs.solid_mix.bind(fs.heavy_add.bind(inp.a, inp.b), inp.b)
    plan = sg.compile(sg.Graph(out, name="heavy"))
    assert reasons(plan) == {"heavy_add": "num_replicas=2: scales on its own",
                             "solid_mix": "fuse=False"}
    assert plan.fused() == []


def test_batching_and_own_limits_fuse_only_when_asked_and_process_options_never() -> None:
    @sg.deployment
    class Batched:
        @sg.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
        async def size(self, items: list[int]) -> list[int]:
            return [len(items)] * len(items)

    limited = fs.light_add.options(name="limited", max_ongoing_requests=8)
    isolated = fs.light_mix.options(name="isolated",
                                    ray_actor_options={"runtime_env": {"env_vars": {"A": "1"}}})
    @sg.deployment
    class Configured:
        def reconfigure(self, config: dict[str, int]) -> None:
            self.k = config["k"]

        def add(self, a: int, b: int) -> int:
            return a + b

    configured = Configured.options(name="configured", user_config={"k": 1}, fuse=True)

    def graph(batched: Any) -> sg.Graph:
        with sg.InputNode() as inp:
            one = batched.bind().size.bind(inp.x)
            out = configured.bind().add.bind(
                isolated.bind(limited.bind(one, inp.x), inp.x), inp.x)
        return sg.Graph(out, name="soft")

    plan = sg.compile(graph(Batched))
    assert reasons(plan) == {
        "Batched": "batches calls (sg.batch) (fuse=True would fuse it)",
        "limited": "sets its own max_ongoing_requests (fuse=True would fuse it)",
        "isolated": "needs a process of its own (runtime_env)",
        "configured": "needs a process of its own (user_config)"}
    assert plan.fused() == []
    asked = sg.compile(graph(Batched.options(fuse=True)))
    assert asked.stage("Batched").fused_into == "soft_driver"
    assert asked.stage("Batched").fusion == "fuse=True, though it batches calls (sg.batch)"
    assert sg.run_local(asked, {"x": 3}) == sg.run_local(plan, {"x": 3})


def test_compile_with_fuse_false_keeps_every_stage_a_deployment() -> None:
    plan = sg.compile(diamond(), fuse=False)
    assert fused(plan) == dict.fromkeys(["Inc", "double", "triple", "add"])
    assert set(reasons(plan).values()) == {"fusion off: compiled with fuse=False"}
    assert not plan.fuse and "0 fused" not in plan.explain()
    assert "4 stage deployments + driver; passes" in plan.explain()
    with pytest.raises(sg.BindError, match="fuse= needs True or False"):
        sg.compile(diamond(), fuse="yes")  # type: ignore[arg-type]


def test_the_serve_config_deploys_only_what_is_not_fused() -> None:
    from tests import cli_graphs

    config = sg.compile(cli_graphs.good).to_serve_config()
    app = config["applications"][0]
    assert [d["name"] for d in app["deployments"]] == ["diamond_driver"]
    assert "fuse" not in app["args"]
    unfused = sg.compile(cli_graphs.good, fuse=False).to_serve_config()["applications"][0]
    assert [d["name"] for d in unfused["deployments"]] == ["Inc", "double", "triple", "add",
                                                           "diamond_driver"]
    assert unfused["args"]["fuse"] is False


def test_the_diagram_draws_fused_stages_inside_the_driver_deployment() -> None:
    lines = to_mermaid(sg.compile(fs.mixed())).splitlines()
    start = lines.index('  subgraph d3["mixed_driver · 1 replica · 0 CPU · fused: tokenize, '
                        'lengths, shout, format_answer"]')
    inside = lines[start + 1:lines.index("  end", start)]
    assert [line.strip() for line in inside] == [
        'n2["tokenize"]', 'n4[/"map shout"\\]', 'n5["lengths"]', 'n9["format_answer"]']
    clusters = [line.split('"')[1].split(" · ")[0] for line in lines
                if line.startswith('  subgraph d')]
    assert clusters == ["Embed", "vote", "Embed_1", "mixed_driver"]


@pytest.mark.parametrize("make, payloads", [
    (diamond, [{"x": x} for x in range(4)]),
    (scoring, [PAYLOAD]),
    (fs.mixed, [MIXED_PAYLOAD, {"text": "", "first": ""}]),
    (fs.spelled, [{"text": "to be"}]),
])
def test_the_local_executor_gives_identical_results_fused_and_unfused(
        make: Callable[[], sg.Graph], payloads: list[Any]) -> None:
    for strict in (False, True):
        on = sg.LocalExecutor(sg.compile(make()), strict=strict)
        off = sg.LocalExecutor(sg.compile(make(), fuse=False), strict=strict)
        assert [on.call(p) for p in payloads] == [off.call(p) for p in payloads]
    assert sg.run_local(sg.compile(scoring()), PAYLOAD) == EXPECTED
    assert sg.run_local(sg.compile(fs.mixed()), MIXED_PAYLOAD) == MIXED_EXPECTED


def random_graph(seed: int, size: int) -> tuple[sg.Graph, Callable[[int, int], list[int]]]:
    """A random DAG of light and heavy stages over inputs `a`, `b`, every node an output;
    and the pure Python function it computes."""
    rng = random.Random(seed)
    plan: list[tuple[str, int, int]] = []  # (kind, left, right): indexes into the values
    for index in range(size):
        plan.append((rng.choice(sorted(fs.KINDS)), rng.randrange(index + 2),
                     rng.randrange(index + 2)))
    with sg.InputNode() as inp:
        values: list[Any] = [inp.a, inp.b]
        for kind, left, right in plan:
            values.append(fs.KINDS[kind].bind(values[left], values[right]))
    graph = sg.Graph(values[2:], name=f"random{seed}")

    def reference(a: int, b: int) -> list[int]:
        known = [a, b]
        for kind, left, right in plan:
            known.append(fs.MEANING[kind](known[left], known[right]))
        return known[2:]

    return graph, reference


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), size=st.integers(1, 8), a=st.integers(-50, 50),
       b=st.integers(-50, 50))
def test_random_graphs_give_identical_results_fused_and_unfused_locally(
        seed: int, size: int, a: int, b: int) -> None:
    graph, reference = random_graph(seed, size)
    on, off = sg.compile(graph), sg.compile(graph, fuse=False)
    assert {s.fused_into is None for s in on.deployments if s.name.startswith(
        ("heavy_add", "solid_mix"))} <= {True}
    assert all(s.fused_into for s in on.deployments if s.name.startswith("light_"))
    expected = reference(a, b)
    assert sg.run_local(on, {"a": a, "b": b}) == sg.run_local(off, {"a": a, "b": b}) == expected


@contextmanager
def served(plan: sg.CompiledPipeline, name: str) -> Iterator[Any]:
    """One application at a time: the session's Ray has logical CPUs for a few replicas.
    Deleted without waiting for its replicas' graceful shutdown (Serve's 2 s wait loop): each
    name is used once, and a next application whose replicas do not fit yet waits for them."""
    handle = sg.serve(plan, name=name, route_prefix=f"/{name}")
    try:
        yield handle
    finally:
        handle.shutdown(wait=False)


@pytest.mark.ray
def test_serve_gives_identical_results_fused_and_unfused(ray_serve: int) -> None:
    """Fused stages run in the driver, not as deployments; responses meet in-process futures
    both ways (a fused stage reading a map of a GPU stage's responses, an autoscaled stage
    reading a map of fused calls, a stream started from a fused stage's result)."""
    from ray import serve

    cases = [(diamond, [{"x": x} for x in range(4)]), (scoring, [PAYLOAD]),
             (fs.mixed, [MIXED_PAYLOAD]), (fs.spelled, [{"text": "to be"}])]
    for make, payloads in cases:
        results = {}
        for fuse in (True, False):
            plan = sg.compile(make(), fuse=fuse)
            name = f"{plan.name}-fuse-{fuse}".lower()
            with served(plan, name) as handle:
                deployed = set(serve.status().applications[name].deployments)
                assert deployed == {s.name for s in plan.served()} | {plan.driver.name}
                results[fuse] = [handle.call(p) for p in payloads]
            assert results[fuse] == [sg.run_local(plan, p) for p in payloads]
        assert results[True] == results[False]


@pytest.mark.ray
def test_a_fused_stage_keeps_its_errors_and_concurrency(ray_serve: int) -> None:
    plan = sg.compile(scoring())
    assert plan.stage("summarize").fused_into == "scoring_driver"
    with served(plan, "fused-scoring") as handle:
        async def concurrent() -> list[Any]:
            payloads = [{**PAYLOAD, "words": ["x" * n, "y"]} for n in range(1, 9)]
            return await asyncio.gather(*(handle.acall(p) for p in payloads))

        results = asyncio.run(concurrent())
        assert [r["report"]["scores"] for r in results] == [[0.5 * n, 0.5] for n in range(1, 9)]
        with pytest.raises(sg.StageError) as caught:
            handle.call({**PAYLOAD, "factor": -1})
        assert caught.value.stage == "Scorer"
    for seed in (3, 11):
        graph, reference = random_graph(seed, 6)
        with served(sg.compile(graph), f"random-{seed}") as handle:
            assert handle.call({"a": 4, "b": -3}) == reference(4, -3)

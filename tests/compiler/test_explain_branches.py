"""`explain`'s control flow section: one line per branch node, saying how it picks its arm,
what each arm reads, a forced arm, and how many nodes run only when their arm is taken."""

from __future__ import annotations

from typing import Any

import pytest

import servegraph as sg
from servegraph.compiler import BranchPlan, CompiledPipeline
from servegraph.compiler.explain import arm_texts, constant_text, explain
from tests import branch_graphs
from tests.stages import diamond


def _control_flow(plan: CompiledPipeline) -> list[str]:
    lines = explain(plan).splitlines()
    start = lines.index("control flow:")
    return [lines[start], *(line for line in lines[start + 1:] if line.startswith("  "))]


def _site(plan: CompiledPipeline, label: str) -> str:
    return next(node.site for node in plan.nodes if node.label == label)


def test_a_switch_names_its_key_and_what_each_case_runs() -> None:
    plan = sg.compile(branch_graphs.by_language())
    assert _site(plan, "switch lang").startswith("tests/branch_graphs.py:")
    assert _control_flow(plan) == [
        "control flow:",
        f"  switch lang ({_site(plan, 'switch lang')}): on input.lang; en -> english, "
        "fr -> french, default -> echo; 6 nodes run only when their arm is taken"]


def test_the_section_sits_between_fusion_and_the_gpu_layout() -> None:
    lines = sg.compile(branch_graphs.escalate()).explain().splitlines()
    assert lines[lines.index("control flow:") + 2:] == ["GPU layout: no GPU stages"]
    assert lines[lines.index("control flow:") - 1].startswith("  french   ")


def test_a_sticky_split_gives_each_arm_its_share() -> None:
    plan = sg.compile(branch_graphs.ab_test())
    assert _control_flow(plan)[1] == (
        f"  split ab ({_site(plan, 'split ab')}): sticky by input.user; english 90% -> english,"
        " french 10% -> french; 4 nodes run only when their arm is taken")


def test_a_split_without_a_key_is_random_with_its_seed() -> None:
    plan = sg.compile(branch_graphs.random_split())
    assert _control_flow(plan)[1] == (
        f"  split ({_site(plan, 'split')}): random (seed 7); english 33.3% -> english, "
        "french 33.3% -> french, echo 33.3% -> echo; 7 nodes run only when their arm is taken")


def test_fallbacks_say_their_default_runs_on_failure() -> None:
    plan = sg.compile(branch_graphs.guarded())
    assert _control_flow(plan)[1:] == [
        f"  fallback safe ({_site(plan, 'fallback safe')}): no key; primary -> english, "
        "default (on failure) -> echo; 1 node runs only when its arm is taken",
        f"  fallback ({_site(plan, 'fallback')}): no key; primary -> french, "
        "default (on failure) -> None"]


def test_a_when_names_its_condition_and_a_constant_arm() -> None:
    plan = sg.compile(branch_graphs.escalate())
    assert _control_flow(plan)[1] == (
        f"  when ({_site(plan, 'when')}): if input.hard; then -> french, otherwise -> 'easy'; "
        "2 nodes run only when their arm is taken")


def test_a_shadow_says_its_candidate_result_is_dropped() -> None:
    plan = sg.compile(branch_graphs.shadowed())
    assert _control_flow(plan)[1] == (
        f"  shadow canary ({_site(plan, 'shadow canary')}): no key; primary -> english, "
        "candidate (shadow, result dropped) -> french")


def test_a_forced_arm_is_named_with_what_forced_it() -> None:
    plan = sg.compile(branch_graphs.by_language())
    nodes = [node.model_copy(update={"branch": node.branch.model_copy(update={"forced": "fr"})})
             if node.branch else node for node in plan.nodes]
    line = _control_flow(plan.model_copy(update={"nodes": nodes}))[1]
    assert line.endswith("default -> echo; forced: fr (testing.route); 6 nodes run only when "
                         "their arm is taken")


def test_an_arm_reading_several_nodes_lists_them() -> None:
    with sg.InputNode() as inp:
        out = sg.when(inp.hard, [inp.text, branch_graphs.french.bind(inp.text)], ["easy", 1])
    plan = sg.compile(sg.Graph(out, name="lists"))
    assert _control_flow(plan)[1] == (
        f"  when ({_site(plan, 'when')}): if input.hard; then -> (input.text, french), "
        "otherwise -> ['easy', 1]; 3 nodes run only when their arm is taken")


def test_a_plan_without_branches_has_no_control_flow_section() -> None:
    assert "control flow:" not in sg.compile(diamond()).explain()


@pytest.mark.parametrize(("template", "text"), [
    ({"$const": None}, "None"), ({"$const": "x"}, "'x'"), ({"$const": 0.5}, "0.5"),
    ({"$opaque": {"index": 0, "repr": "<object at 0x1>"}}, "<object at 0x1>"),
    ({"$list": [{"$const": 1}, {"$const": "a"}]}, "[1, 'a']"),
    ({"$tuple": [{"$const": 1}]}, "(1,)"), ({"$tuple": []}, "()"),
    ({"$dict": {"k": {"$list": []}}}, "{'k': []}"),
])
def test_constant_text_reads_like_python(template: dict[str, Any], text: str) -> None:
    assert constant_text(template) == text


@pytest.mark.parametrize(("branch", "texts"), [
    (BranchPlan(kind="split", name="ab", arms=["v1", "v2"], weights=[3, 1]), ["v1 75%", "v2 25%"]),
    (BranchPlan(kind="split", name="s", arms=["a", "b"], weights=[999, 1]), ["a 99.9%", "b 0.1%"]),
    (BranchPlan(kind="fallback", name="f", arms=["primary", "default"]),
     ["primary", "default (on failure)"]),
    (BranchPlan(kind="shadow", name="s", arms=["primary", "candidate"]),
     ["primary", "candidate (shadow, result dropped)"]),
    (BranchPlan(kind="switch", name="w", arms=["'1'", "1", "default"], cases=["1", 1],
                default=True), ["'1'", "1", "default"]),
])
def test_arm_texts(branch: BranchPlan, texts: list[str]) -> None:
    assert arm_texts(branch) == texts

"""Control-flow nodes at bind and compile time: the gallery of bad branches, each with its
exact message naming the branch and the user's line; and the plan's facts (names, arms,
weights, the lazy nodes) computed once by the compiler."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

import servegraph as sg
from servegraph.executors.branches import Routing, unit_hash, weighted_arm

HERE = "tests/dag/test_control.py"
SWITCH_LINE = 'out = sg.switch(inp.kind, {"w": a'



@sg.deployment
def words(text: str) -> list[str]:
    return text.split()


@sg.deployment
def count(text: str) -> int:
    return len(text)


@sg.deployment
def shout(text: str) -> str:
    return text.upper()


@sg.deployment
def whisper(text: str) -> str:
    return text.lower()


@sg.deployment
async def tokens(text: str) -> AsyncIterator[str]:
    for word in text.split():
        yield word


def _line(pattern: str) -> int:
    """The line of this file holding `pattern` (the site a message must quote)."""
    with open(HERE) as source:
        return next(number for number, line in enumerate(source, 1)
                    if line.strip().startswith(pattern))


def test_arms_that_disagree_on_their_type_name_both_arms_and_their_lines() -> None:
    with sg.InputNode() as inp:
        a = words.bind(inp.text)
        b = count.bind(inp.text)
        out = sg.switch(inp.kind, {"w": a, "c": b}, name="pick")
    with pytest.raises(sg.TypeMismatchError) as caught:
        sg.compile(sg.Graph(out))
    site = f"{HERE}:{_line(SWITCH_LINE)}"
    assert str(caught.value) == (
        f"[typecheck] stage 'switch pick' ({site}: out = sg.switch(inp.kind, {{\"w\": a, "
        f"\"c\": b}}, name=\"pick\")): the arms of switch pick disagree: w is words "
        f"({HERE}:{_line('a = words.bind')}: a = words.bind(inp.text)) returning list[str], "
        f"c is count ({HERE}:{_line('b = count.bind')}: b = count.bind(inp.text)) returning "
        "int\n  hint: make every arm return the same type (what reads the branch must accept "
        "whichever arm ran), or convert in a stage inside the arm")


def test_a_switch_needs_cases() -> None:
    with sg.InputNode() as inp:
        with pytest.raises(sg.BindError, match=re.escape(
                f"[bind] stage 'switch' ({HERE}:{_line('sg.switch(inp.lang, {})  # no cases')}: "
                "sg.switch(inp.lang, {})  # no cases): sg.switch needs at least one case")):
            sg.switch(inp.lang, {})  # no cases


@pytest.mark.parametrize("weight", [0, -5, float("nan"), "10", True])
def test_split_weights_must_be_positive_numbers(weight: object) -> None:
    with sg.InputNode() as inp:
        a, b = shout.bind(inp.text), whisper.bind(inp.text)
        with pytest.raises(sg.BindError) as caught:
            sg.split({a: 50, b: weight}, name="ab")  # type: ignore[dict-item]
    message = str(caught.value)
    line = _line("sg.split({a: 50, b: weight}")
    assert message.startswith(f"[bind] stage 'split ab' ({HERE}:{line}")
    assert f"split weight {weight!r} of whisper is not a positive number" in message


def test_a_split_needs_two_variants_and_a_fallback_a_node() -> None:
    with sg.InputNode() as inp:
        with pytest.raises(sg.BindError, match=r"sg\.split needs at least two variants"):
            sg.split({shout.bind(inp.text): 1})
        with pytest.raises(sg.BindError, match=r"sg\.fallback needs a node, got int 3"):
            sg.fallback(3, default=0)


def test_a_stream_cannot_be_an_arm() -> None:
    with sg.InputNode() as inp:
        out = sg.when(inp.stream, tokens.bind(inp.text), shout.bind(inp.text), name="s")
    with pytest.raises(sg.CompileError, match=r"\[validate\] stage 'when s' .*the stream of "
                                              r"tokens is an argument of when s"):
        sg.compile(sg.Graph(out))


def test_two_branches_with_one_name_are_refused() -> None:
    with sg.InputNode() as inp:
        one = sg.when(inp.a, shout.bind(inp.text), whisper.bind(inp.text), name="x")
        two = sg.when(inp.b, shout.bind(inp.text), whisper.bind(inp.text), name="x")
    with pytest.raises(sg.CompileError, match="two branches are named 'x'"):
        sg.compile(sg.Graph([one, two]))


def test_the_plan_names_branches_marks_lazy_nodes_and_holds_split_weights() -> None:
    with sg.InputNode() as inp:
        shared = shout.bind(inp.text)
        first = sg.split({shared: 3, whisper.bind(inp.text): 1}, key=inp.user)
        second = sg.split({whisper.bind(shared): 1, shout.bind(inp.text): 1})
        out = sg.switch(inp.lang, {1: first, "1": second, None: shared})
    plan = sg.compile(sg.Graph([out, shared], name="facts"))
    branches = {node.label: node.branch for node in plan.nodes if node.branch}
    assert list(branches) == ["split", "split_2", "switch"]
    assert branches["switch"].arms == ["1", "'1'", "None"]
    assert branches["split"].arms == ["shout", "whisper"]
    assert (branches["split"].weights, branches["split"].sticky) == ([3.0, 1.0], True)
    assert plan.driver.options["user_config"] == {"splits": {
        "split": {"shout": 3.0, "whisper": 1.0},
        "split_2": {"whisper": 1.0, "shout": 1.0}}}
    lazy = sorted(node.label for node in plan.nodes if node.lazy)
    assert lazy == ["input.text", "input.text", "input.user", "shout", "split", "split_2",
                    "whisper", "whisper"]
    assert [node.label for node in plan.nodes if not node.lazy and node.op == "call"] == [
        "shout"]


def test_a_switch_matches_a_case_of_1_to_1_and_not_to_true() -> None:
    with sg.InputNode() as inp:
        out = sg.switch(inp.key, {1: shout.bind(inp.text)}, default=whisper.bind(inp.text))
    graph = sg.Graph(out)
    assert sg.run_local(graph, {"key": 1, "text": "Ab"}) == "AB"
    assert sg.run_local(graph, {"key": True, "text": "Ab"}) == "ab"


def test_unit_hash_is_stable_and_weighted_arms_cover_the_unit_interval() -> None:
    assert unit_hash("user42") == unit_hash("user42")
    assert round(unit_hash("user42"), 6) == round(unit_hash("user42"), 6) != unit_hash("x")
    assert unit_hash({"b": 1, "a": 2}) == unit_hash({"a": 2, "b": 1})
    assert [weighted_arm([90, 10], p) for p in (0.0, 0.899, 0.9, 0.999)] == [0, 0, 1, 1]
    assert [weighted_arm([1, 1, 2], p) for p in (0.2, 0.3, 0.5, 0.99)] == [0, 1, 2, 2]


def test_routing_takes_new_weights_and_refuses_bad_ones() -> None:
    with sg.InputNode() as inp:
        out = sg.split({shout.bind(inp.t): 1, whisper.bind(inp.t): 1}, name="ab")
    routing = Routing(sg.compile(sg.Graph(out)).nodes)
    routing.reconfigure({"splits": {"ab": {"shout": 3, "whisper": 1}}})
    assert routing.weights == {"ab": [3.0, 1.0]}
    with pytest.raises(ValueError, match="no split named 'cd'; splits: ab"):
        routing.reconfigure({"splits": {"cd": {}}})
    with pytest.raises(ValueError, match=r"split 'ab' needs a weight for each of its variants "
                                         r"\['shout', 'whisper'\]"):
        routing.reconfigure({"splits": {"ab": {"shout": 1}}})
    with pytest.raises(ValueError, match="weight 0 of 'whisper' is not a positive number"):
        routing.reconfigure({"splits": {"ab": {"shout": 1, "whisper": 0}}})
    assert routing.weights == {"ab": [3.0, 1.0]}  # a refused config changes nothing

"""Control flow in diagrams: a branch is a diamond, the edges into it say the part each source
plays (key, arm, split share), and a lazy node is dashed, in Mermaid, DOT and SVG alike."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import servegraph as sg
from servegraph.visualize import to_dot, to_mermaid
from tests import branch_graphs
from tests.branch_graphs import french

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (make install adds it)")

SVG = "{http://www.w3.org/2000/svg}"


def _edges(text: str, arrow: str) -> list[str]:
    return [line for line in text.splitlines() if arrow in line]


def _into(text: str, target: str) -> list[str]:
    """The edges into `target`, Mermaid's (`a -->|label| b`) or DOT's (`a -> b [...]`)."""
    return [line for line in text.splitlines() if "->" in line and (
        line.endswith(f" {target}") or f"-> {target} [" in line or line.endswith(f"-> {target};"))]


def test_a_switch_is_a_diamond_fed_by_its_key_and_arms_in_mermaid() -> None:
    lines = to_mermaid(sg.compile(branch_graphs.by_language())).splitlines()
    assert '  n8{"switch lang"}' in lines
    assert lines[lines.index("  classDef lazy stroke-dasharray: 5 5") + 1] == \
        "  class n2,n3,n4,n5,n6,n7 lazy"
    assert _edges("\n".join(lines), "-->") == [
        "  n0 --> n1", "  n0 --> n2", "  n2 --> n3", "  n0 --> n4", "  n4 --> n5",
        "  n0 --> n6", "  n6 --> n7", "  n1 -->|key| n8", "  n3 -->|en| n8",
        "  n5 -->|fr| n8", "  n7 -->|default| n8", "  n8 -->|str| out"]


def test_a_switch_in_dot_draws_its_untaken_arms_dashed() -> None:
    dot = to_dot(sg.compile(branch_graphs.by_language()))
    lines = dot.splitlines()
    assert '  n8 [label="switch lang", shape=diamond];' in lines
    assert '  n1 [label="input.lang", shape=note];' in lines  # the key runs on every request
    assert '  n2 [label="input.text", shape=note, style=dashed];' in lines
    assert '    n3 [label="english", shape=box, style=dashed];' in lines
    assert _into(dot, "n8") == [
        '  n1 -> n8 [label="key"];', '  n3 -> n8 [label="en"];', '  n5 -> n8 [label="fr"];',
        '  n7 -> n8 [label="default"];']
    assert '  n8 -> out [label="str"];' in lines


def test_a_split_labels_each_arm_with_its_share_of_the_weight() -> None:
    plan = sg.compile(branch_graphs.ab_test())
    assert _edges(to_mermaid(plan), "-->|")[:3] == [
        "  n5 -->|key| n6", "  n2 -->|english 90%| n6", "  n4 -->|french 10%| n6"]
    dot = to_dot(plan)
    assert '  n6 [label="split ab", shape=diamond];' in dot.splitlines()
    assert _into(dot, "n6") == [
        '  n5 -> n6 [label="key"];', '  n2 -> n6 [label="english 90%"];',
        '  n4 -> n6 [label="french 10%"];']


def test_a_split_without_a_key_has_no_key_edge() -> None:
    mermaid = to_mermaid(sg.compile(branch_graphs.random_split()))
    assert _into(mermaid, "n7") == ["  n2 -->|english 33.3%| n7",
                                        "  n4 -->|french 33.3%| n7", "  n6 -->|echo 33.3%| n7"]
    assert "  class n0,n1,n2,n3,n4,n5,n6 lazy" in mermaid.splitlines()


def test_a_fallback_labels_its_default_and_writes_a_constant_one_in_the_diamond() -> None:
    plan = sg.compile(branch_graphs.guarded())
    mermaid = to_mermaid(plan).splitlines()
    assert '  n4{"fallback safe"}' in mermaid
    assert '  n6{"fallback<br/>default (on failure) = None"}' in mermaid
    assert "  class n3 lazy" in mermaid  # the default stage; the primary always runs
    assert _edges("\n".join(mermaid), "-->|") == [
        "  n2 -->|primary| n4", "  n3 -->|default (on failure)| n4", "  n5 -->|primary| n6",
        "  n4 -->|str| out", "  n6 -->|str| out"]
    dot = to_dot(plan).splitlines()
    assert '  n6 [label="fallback\\ndefault (on failure) = None", shape=diamond];' in dot
    assert '    n3 [label="echo", shape=box, style=dashed];' in dot
    assert '    n2 [label="english", shape=box];' in dot
    assert '  n3 -> n4 [label="default (on failure)"];' in dot


def test_a_when_labels_its_condition_if_and_writes_a_constant_arm_in_the_diamond() -> None:
    plan = sg.compile(branch_graphs.escalate())
    mermaid = to_mermaid(plan)
    assert '  n4{"when<br/>otherwise = \'easy\'"}' in mermaid.splitlines()
    assert _into(mermaid, "n4") == ["  n1 -->|if| n4", "  n3 -->|then| n4"]
    assert "  class n2,n3 lazy" in mermaid.splitlines()
    dot = to_dot(plan)
    assert '  n4 [label="when\\notherwise = \'easy\'", shape=diamond];' in dot.splitlines()
    assert _into(dot, "n4") == ['  n1 -> n4 [label="if"];', '  n3 -> n4 [label="then"];']


def test_a_shadow_says_its_candidate_result_is_dropped_and_nothing_is_lazy() -> None:
    plan = sg.compile(branch_graphs.shadowed())
    mermaid = to_mermaid(plan)
    assert _into(mermaid, "n5") == [
        "  n2 -->|primary| n5", "  n4 -->|candidate (shadow, result dropped)| n5"]
    assert "classDef" not in mermaid and "style=dashed" not in to_dot(plan)


def test_a_node_read_by_two_arms_is_one_edge_with_both_labels() -> None:
    with sg.InputNode() as inp:
        both = french.bind(inp.text)
        out = sg.when(inp.hard, both, both)
    dot = to_dot(sg.compile(sg.Graph(out, name="same")))
    assert _into(dot, "n4") == ['  n3 -> n4 [label="if"];',
                                    '  n2 -> n4 [label="then, otherwise"];']


def test_arm_labels_are_escaped_in_mermaid() -> None:
    with sg.InputNode() as inp:
        out = sg.switch(inp.kind, {"a|b": french.bind(inp.text), "<i>": french.bind(inp.text)})
    mermaid = to_mermaid(sg.compile(sg.Graph(out, name="odd")))
    assert "a|b" not in mermaid and "<i>" not in mermaid
    assert _into(mermaid, "n6") == ["  n1 -->|key| n6", "  n3 -->|a#124;b| n6",
                                        "  n5 -->|#lt;i#gt;| n6"]


def test_a_forced_arm_is_written_in_the_diamond() -> None:
    plan = sg.compile(branch_graphs.by_language())
    nodes = [node.model_copy(update={"branch": node.branch.model_copy(update={"forced": "fr"})})
             if node.branch else node for node in plan.nodes]
    forced = plan.model_copy(update={"nodes": nodes})
    assert '  n8{"switch lang<br/>forced: fr"}' in to_mermaid(forced).splitlines()


@needs_dot
def test_branches_render_to_svg_with_diamonds_and_dashed_lazy_nodes(tmp_path: Path) -> None:
    plan = sg.compile(branch_graphs.language_and_ab())
    root = ET.fromstring(sg.render(plan, tmp_path / "branches.svg"))
    texts = {el.text for el in root.iter(f"{SVG}text")}
    assert {"switch lang", "split ab", "key", "en", "default", "english 90%",
            "french 10%"} <= texts
    shapes = {el.get("points", "").count(" ") for el in root.iter(f"{SVG}polygon")}
    assert 4 in shapes  # a diamond: a closed polygon of four corners and its start again
    assert any(el.get("stroke-dasharray") for el in root.iter(f"{SVG}polygon"))
    png = sg.render(plan, tmp_path / "branches.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000

"""An `sg.App` drawn whole: a stage its graphs share is one cluster holding each graph's
calls, each input names its route, each graph its own output."""

from __future__ import annotations

import shutil

import pytest

import servegraph as sg
from servegraph.pipelines.front_door import app


def test_a_shared_stage_is_drawn_once_with_every_graphs_calls() -> None:
    text = sg.render(app, format="mmd").decode()
    assert text.count('subgraph c0["Normalizer · 1 replica · 1 CPU"]') == 1
    assert text.count("subgraph") == 3  # the shared stage, and two graphs' fused stages
    body = text.split('subgraph c0["Normalizer · 1 replica · 1 CPU"]')[1].split("end")[0]
    assert body.split() == ['g0_n2["Normalizer.clean"]', 'g1_n2["Normalizer.clean"]',
                            'g2_n2["Normalizer.pid"]']
    assert 'g0_n0[/"POST /words · input: Text"/]' in text
    assert 'g1_n0[/"POST /digits · input: Text"/]' in text
    assert '"pids (called by the ingress) · input: Text' in text
    assert 'g0_out(["words: output"])' in text
    assert "g0_n3 -->|dict#91;str, int#93;| g0_out" in text


def test_the_dot_text_of_an_app_holds_every_graph() -> None:
    text = sg.render(sg.compile(app), format="dot").decode()
    assert text.count("subgraph cluster_c0 {") == 1
    assert "g2_n2 -> g2_out" in text


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot")
def test_an_app_renders_as_svg() -> None:
    svg = sg.render(app, format="svg")
    assert svg.startswith(b"<?xml") and b"POST /words" in svg

"""Diagrams: Mermaid and DOT text always; SVG and PNG through Graphviz; labels escaped."""

from __future__ import annotations

import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

import servegraph as sg
from servegraph.visualize import to_dot, to_mermaid
from tests import gpu_graphs
from tests.stages import scoring

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (make install adds it)")

SVG = "{http://www.w3.org/2000/svg}"


def hostile() -> sg.Graph:
    @sg.deployment
    def quoted(text: str) -> str:
        return text

    evil = quoted.options(name="<script>alert(1)</script>")
    odd = quoted.options(name='a"b')
    with sg.InputNode() as inp:
        out = odd.bind(evil.bind(inp.text))
    return sg.Graph(out, name="hostile")


def test_mermaid_has_every_deployment_node_and_edge() -> None:
    text = to_mermaid(sg.compile(scoring(), fuse=False))
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert '  subgraph d0["Scorer · 1 replica · 1 CPU · batch score≤8"]' in lines
    assert '    n4[/"map Scorer.score"\\]' in lines
    assert '  subgraph d1["summarize · 1 replica · 1 CPU"]' in lines
    assert [line for line in lines if "-->" in line] == [
        "  n0 -->|Request| n1", "  n1 -->|str| n2", "  n0 -->|Request| n3",
        "  n3 -->|list#91;str#93;| n4", "  n0 -->|Request| n5", "  n2 -->|float| n6",
        "  n5 -->|int| n6", "  n0 -->|Request| n7", "  n6 -->|float| n8",
        "  n4 -->|list#91;float#93;| n8", "  n7 -->|list#91;str#93;| n8",
        "  n8 -->|dict#91;str, Any#93;| out", "  n2 -->|float| out", "  n6 -->|float| out"]


def test_edges_without_annotations_carry_no_label() -> None:
    @sg.deployment
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    with sg.InputNode() as inp:
        out = untyped.bind(inp.x)
    assert to_dot(sg.compile(sg.Graph(out))).splitlines()[-4:-1] == [
        "  n0 -> n1;", "  n1 -> n2;", "  n2 -> out;"]


def test_labels_are_escaped_in_text_formats() -> None:
    plan = sg.compile(hostile())
    mermaid = to_mermaid(plan)
    assert "<script>" not in mermaid and 'a"b' not in mermaid
    assert '#lt;script#gt;alert(1)#lt;/script#gt;' in mermaid
    assert 'a#quot;b' in mermaid
    dot = to_dot(plan)
    assert 'label="a\\"b"' in dot
    assert 'label="<script>alert(1)</script>"' in dot  # DOT strings are data, not markup


@needs_dot
def test_svg_is_well_formed_with_every_stage_and_no_injected_markup(tmp_path: Path) -> None:
    path = tmp_path / "hostile.svg"
    data = sg.render(hostile(), path)
    assert path.read_bytes() == data
    root = ET.fromstring(data)
    assert not [el for el in root.iter() if el.tag.endswith("script")]
    texts = [el.text for el in root.iter(f"{SVG}text") if el.text]
    assert "<script>alert(1)</script>" in texts and 'a"b' in texts
    titles = {el.text for el in root.iter(f"{SVG}title")}
    assert {"n0", "n1", "n2", "n3", "out", "n0->n1", "n1->n2", "n2->n3", "n3->out"} <= titles


@needs_dot
def test_flagship_renders_to_svg_and_png(tmp_path: Path) -> None:
    from servegraph.pipelines import search

    svg = sg.render(search.graph, tmp_path / "search.svg")
    texts = [el.text for el in ET.fromstring(svg).iter(f"{SVG}text")]
    for label in ("Encoder.encode", "map Encoder.encode", "Ranker.rank", "input.query",
                  "input.documents", "output"):
        assert label in texts
    png = sg.render(search.graph, tmp_path / "search.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def gpu_plan() -> sg.CompiledPipeline:
    from tests.compiler.test_pack import mixed

    return sg.compile(mixed(), cluster=sg.ClusterSpec(gpus=2, gpu_memory="80GiB"))


def test_the_gpu_layout_is_drawn_beside_the_plan_in_mermaid() -> None:
    lines = to_mermaid(gpu_plan()).splitlines()
    start = lines.index('  subgraph gpus["GPU layout: 2 GPUs used, lower bound 2"]')
    assert lines[start:] == [
        '  subgraph gpus["GPU layout: 2 GPUs used, lower bound 2"]',
        '    gpu0[["node0 GPU 0 · 76% · 60GiB of 80GiB<br/>Big#35;0 0.38<br/>Big#35;1 0.38"]]',
        '    gpu1[["node0 GPU 1 · 100% · 80GiB of 80GiB<br/>Mid#35;0 0.25<br/>Mid#35;1 0.25'
        '<br/>Mid#35;2 0.25<br/>Scaled#35;0 0.25"]]',
        "  end", "  n1 -.- gpu0", "  n2 -.- gpu1", "  n3 -.- gpu1"]
    assert '  subgraph d0["Big · 2 replicas · 1 CPU · 0.38 GPU"]' in lines


def test_the_dot_diagram_ties_each_stage_to_its_gpus_as_mermaid_does() -> None:
    lines = to_dot(gpu_plan()).splitlines()
    assert [line for line in lines if "gpu" in line and "->" in line] == [
        "  out -> gpu0 [style=invis];", "  out -> gpu1 [style=invis];",
        "  n1 -> gpu0 [style=dashed, dir=none, color=gray50, constraint=false];",
        "  n2 -> gpu1 [style=dashed, dir=none, color=gray50, constraint=false];",
        "  n3 -> gpu1 [style=dashed, dir=none, color=gray50, constraint=false];"]


def test_each_deployment_is_labelled_with_the_replicas_serve_runs() -> None:
    """An autoscaled stage shows its range (num_replicas="auto": Serve's 1..100), a fixed one
    its count, each with what one replica reserves."""
    plan = sg.compile(gpu_graphs.auto, cluster=sg.ClusterSpec(gpus=2, gpu_memory="80GiB"))
    lines = sg.render(plan, format="mmd").decode().splitlines()
    assert [line for line in lines if line.startswith("  subgraph d")] == [
        '  subgraph d0["tokenize · 2 replicas · 1 CPU"]',
        '  subgraph d1["AutoEmbedder · 1-100 replicas · 1 CPU · 0.25 GPU"]',
    ]
    scaled = to_mermaid(sg.compile(gpu_graphs.scaled,
                                   cluster=sg.ClusterSpec(gpus=4, gpu_memory="24GiB")))
    assert '  subgraph d0["join · 1-8 replicas · 1 CPU"]' in scaled.splitlines()


@needs_dot
def test_a_plan_with_gpu_sharing_renders_to_svg_and_png(tmp_path: Path) -> None:
    plan = gpu_plan()
    root = ET.fromstring(sg.render(plan, tmp_path / "gpus.svg"))
    texts = [el.text for el in root.iter(f"{SVG}text")]
    for label in ("Big · 2 replicas · 1 CPU · 0.38 GPU", "Mid · 3 replicas · 1 CPU · 0.25 GPU",
                  "GPU layout: 2 GPUs used, lower bound 2",
                  "node0 GPU 0 · 76% · 60GiB of 80GiB", "Big#0 0.38", "Big#1 0.38",
                  "node0 GPU 1 · 100% · 80GiB of 80GiB", "Mid#2 0.25", "Scaled#0 0.25"):
        assert label in texts
    titles = {el.text for el in root.iter(f"{SVG}title")}
    assert {"cluster_gpus", "gpu0", "gpu1", "n0->n1", "n3->n4", "n4->out", "n1->gpu0",
            "n3->gpu1"} <= titles  # the dashed stage-to-GPU ties are drawn
    png = sg.render(plan, tmp_path / "gpus.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_unknown_format_says_which_work() -> None:
    with pytest.raises(sg.PipelineError) as caught:
        sg.render(scoring(), "diagram.gif")
    assert str(caught.value) == ("cannot render format 'gif': use one of .svg .png .pdf .dot "
                                 ".mmd, or pass format=")


def test_live_status_labels_and_colours_each_deployment() -> None:
    from servegraph.visualize import LiveStatus
    from tests.stages import diamond

    plan = sg.compile(diamond(), fuse=False)
    live = {"Inc": LiveStatus("HEALTHY", {"RUNNING": 1}),
            "add": LiveStatus("UNHEALTHY", {"STARTING": 1})}
    mermaid = to_mermaid(plan, live).splitlines()
    assert '  subgraph d0["Inc · 1 replica · 1 CPU · HEALTHY: RUNNING 1"]' in mermaid
    assert '  subgraph d3["add · 1 replica · 1 CPU · UNHEALTHY: STARTING 1"]' in mermaid
    assert [line for line in mermaid if line.startswith("  style")] == [
        "  style d0 fill:#d9f2d9", "  style d3 fill:#f8d0d0"]
    dot = to_dot(plan, live)
    assert dot.count('style="rounded,filled"') == 2
    assert 'fillcolor="#d9f2d9"' in dot and 'fillcolor="#f8d0d0"' in dot


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _screenshot(page: Path, out: Path, profile: Path) -> bytes:
    """Headless Chromium, flags as this machine needs them (no sandbox as root, no network)."""
    done = subprocess.run(
        [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
         "--window-size=1600,400", f"--screenshot={out}", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.exists(), done.stderr
    return out.read_bytes()


def _distinct_pixel_bytes(png: bytes) -> int:
    """How many distinct byte values the decompressed image data holds (a blank page: few)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    data, position = b"", 8
    while position < len(png):
        length = struct.unpack(">I", png[position:position + 4])[0]
        kind = png[position + 4:position + 8]
        if kind == b"IDAT":
            data += png[position + 8:position + 8 + length]
        position += 12 + length
    return len(set(zlib.decompress(data)))


@needs_dot
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                    "(make install adds it)")
def test_the_flagship_svg_draws_in_a_browser(tmp_path: Path) -> None:
    from servegraph.pipelines import search

    drawn_svg, blank_svg = tmp_path / "search.svg", tmp_path / "blank.svg"
    sg.render(search.graph, drawn_svg)
    blank_svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="1600" height="400"/>')
    drawn = _screenshot(drawn_svg, tmp_path / "drawn.png", tmp_path / "profile")
    blank = _screenshot(blank_svg, tmp_path / "blank.png", tmp_path / "profile")
    assert _distinct_pixel_bytes(blank) < 8
    assert _distinct_pixel_bytes(drawn) > 64

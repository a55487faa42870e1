"""Graphs, apps and plans in Jupyter: their display data (`visualize.notebook.mimebundle`), the
formatters IPython finds for them, and `docs/pipeline.ipynb` run in a real kernel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

import servegraph as sg
from servegraph.visualize.notebook import mimebundle, register
from tests import gpu_graphs
from tests.stages import scoring

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (make install adds it)")

SVG = "{http://www.w3.org/2000/svg}"
DOCS = Path(__file__).resolve().parents[2] / "docs"
GPU_CLUSTER = sg.ClusterSpec(gpus=3, gpu_memory="24GiB")


def svg_texts(svg: str) -> list[str]:
    return [el.text or "" for el in ET.fromstring(svg).iter(f"{SVG}text")]


def two_graphs() -> sg.App:
    return sg.App({"/rag": gpu_graphs.rag, "/words": gpu_graphs.words}, name="two")


@needs_dot
def test_a_graph_displays_as_the_svg_of_its_diagram() -> None:
    data = mimebundle(gpu_graphs.rag)
    assert list(data) == ["image/svg+xml"]
    texts = svg_texts(data["image/svg+xml"])
    assert {"Embedder.embed", "Reranker.rerank", "top_hits", "output"} <= set(texts)


@needs_dot
def test_a_plan_displays_with_its_gpu_layout() -> None:
    plan = sg.compile(gpu_graphs.rag, cluster=GPU_CLUSTER)
    texts = svg_texts(mimebundle(plan)["image/svg+xml"])
    assert "GPU layout: 3 GPUs used, lower bound 3" in texts
    assert "Embedder#0 0.42" in texts


@needs_dot
def test_an_app_and_its_plan_display_every_graph_in_one_svg() -> None:
    for shown in (two_graphs(), sg.compile(two_graphs(), cluster=GPU_CLUSTER)):
        texts = svg_texts(mimebundle(shown)["image/svg+xml"])
        assert {"Reranker.rerank", "join"} <= set(texts)


def test_without_dot_the_diagram_is_mermaid_in_markdown(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SVG beside it: Jupyter prefers Markdown, so the SVG would never be seen anyway."""
    monkeypatch.setenv("PATH", str(tmp_path))  # Graphviz's `dot` is not found
    data = mimebundle(sg.compile(gpu_graphs.rag, cluster=GPU_CLUSTER))
    assert list(data) == ["text/markdown"]
    markdown = data["text/markdown"]
    assert markdown.startswith("```mermaid\nflowchart LR\n") and markdown.endswith("```\n")
    assert 'subgraph gpus["GPU layout: 3 GPUs used, lower bound 3"]' in markdown


def test_when_dot_fails_the_mermaid_text_is_shown(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """A `dot` that is found but fails (a broken install) costs the SVG, not the diagram."""
    fake_dot = tmp_path / "dot"
    fake_dot.write_text("#!/bin/sh\nexit 3\n")
    fake_dot.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    data = mimebundle(scoring())
    assert list(data) == ["text/markdown"] and data["text/markdown"].startswith("```mermaid")


def test_a_graph_that_does_not_compile_says_why_instead_of_raising() -> None:
    @sg.deployment(num_replicas=2, ray_actor_options={"num_gpus": 1.5})
    def greedy(text: str) -> str:
        return text

    with sg.InputNode() as inp:
        graph = sg.Graph(greedy.bind(inp), name="greedy")
    data = mimebundle(graph)
    assert list(data) == ["text/markdown"]
    assert data["text/markdown"].startswith("`<sg.Graph 'greedy': 2 nodes>`: no diagram (")
    assert "Error" in data["text/markdown"]


def test_anything_else_gets_a_note_not_an_exception() -> None:
    assert mimebundle(42)["text/markdown"].startswith("`42`: no diagram (")


def test_ipython_finds_the_diagram_by_type_name() -> None:
    """`register` on a real IPython display formatter: the diagram joins the plain repr."""
    formatters = pytest.importorskip("IPython.core.formatters")
    shell = SimpleNamespace(display_formatter=formatters.DisplayFormatter())
    register(shell)
    plan = sg.compile(gpu_graphs.rag, cluster=GPU_CLUSTER)
    for shown in (gpu_graphs.rag, plan, two_graphs()):
        data, _ = shell.display_formatter.format(shown)
        assert data["text/plain"] == repr(shown)
        assert {"image/svg+xml", "text/markdown"} & set(data)


def test_a_terminal_shell_gets_the_plain_repr_only() -> None:
    """IPython in a terminal shows text alone: no graph is compiled nor drawn for it."""
    formatters = pytest.importorskip("IPython.core.formatters")
    shell = SimpleNamespace(display_formatter=formatters.DisplayFormatter())
    shell.display_formatter.active_types = ["text/plain"]
    register(shell)
    data, _ = shell.display_formatter.format(gpu_graphs.rag)
    assert data == {"text/plain": repr(gpu_graphs.rag)}


def test_importing_servegraph_in_ipython_registers_the_formatters() -> None:
    """What a kernel does: the shell exists first, then `import servegraph`; in a plain
    interpreter the import loads no diagram code."""
    code = ("import sys\nfrom IPython.core.interactiveshell import InteractiveShell\n"
            "shell = InteractiveShell.instance()\nimport servegraph\n"
            "from tests import gpu_graphs\n"
            "data, _ = shell.display_formatter.format(gpu_graphs.words)\n"
            "print(sorted(data))\n")
    pytest.importorskip("IPython")
    root = str(DOCS.parent)
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120, cwd=root, check=True)
    expected = "image/svg+xml" if shutil.which("dot") else "text/markdown"
    assert shown.stdout.strip() == str(sorted([expected, "text/plain"]))
    plain = subprocess.run(
        [sys.executable, "-c", "import sys, servegraph; "
         "print('servegraph.visualize' in sys.modules)"],
        capture_output=True, text=True, timeout=120, cwd=root, check=True)
    assert plain.stdout.strip() == "False"


@needs_dot
def test_the_docs_notebook_runs_and_shows_the_graph_and_the_plan_as_svg() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(DOCS / "pipeline.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(DOCS)}}).execute()
    svgs = [output["data"]["image/svg+xml"] for cell in notebook.cells
            if cell.cell_type == "code" for output in cell.outputs
            if "image/svg+xml" in output.get("data", {})]
    assert len(svgs) == 2
    graph_texts, plan_texts = svg_texts(svgs[0]), svg_texts(svgs[1])
    assert {"Cnn.predict", "vote", "output"} <= set(graph_texts)
    assert "GPU layout: 1 GPU used, lower bound 1" in plan_texts
    assert "Cnn#0 0.25" in plan_texts

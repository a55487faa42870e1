"""The package itself: one copy in sys.modules, a pinned public API, layered imports."""

from __future__ import annotations

import os
import subprocess
import sys

import servegraph as sg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_public_api_is_pinned() -> None:
    assert sg.__all__ == sorted([
        "App", "AppHandle", "BindError", "CapacityError", "ClusterSpec", "CompileError",
        "CompiledApp", "CompiledPipeline", "DeadlineError", "DeployError", "EdgeTypeError",
        "Graph", "Graphs", "HttpRequest", "InputError", "InputNode", "LocalExecutor",
        "NodeSpec", "OptionsError", "PackingError", "PipelineError", "PipelineHandle",
        "Profile", "StageError", "StageTimeoutError", "Target", "TypeMismatchError", "Upload",
        "batch", "compile", "connect", "deployment", "detect_cluster", "fallback", "graphs",
        "map", "multiplexed", "multiplexed_model_id", "profile", "render", "run_local",
        "serve", "shadow", "split", "switch", "when",
    ])
    for name in sg.__all__:
        assert getattr(sg, name) is not None
    # what an editor or `dir()` offers: the API, not the module's imports or subpackages
    assert dir(sg) == sorted([*sg.__all__, "__version__", "testing"])


def test_the_package_is_imported_once() -> None:
    """The repository root is the package: no module of it may sit in sys.modules under a
    second name (as `dag.nodes` or `main.errors` would, if pytest imported it twice)."""
    assert os.path.dirname(os.path.abspath(sg.__file__)) == ROOT
    seen: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        # a relative __file__ is no file (torch.ops says '_ops.py'): not ours
        if not path or not os.path.isabs(path) or not path.startswith(ROOT + os.sep):
            continue
        relative = os.path.relpath(path, ROOT)
        if relative.startswith(("tests" + os.sep, "benchmarks" + os.sep, ".venv" + os.sep)):
            continue
        assert name.startswith("servegraph"), f"{relative} imported as {name!r}"
        assert relative not in seen, f"{relative} imported as {seen[relative]!r} and {name!r}"
        seen[relative] = name


def test_imports_flow_one_way() -> None:
    """`import servegraph`, the dag and the compiler need neither ray nor graphviz."""
    code = ("import sys, servegraph, servegraph.dag, servegraph.compiler, "
            "servegraph.executors.local; "
            "print(sorted(m for m in ('ray', 'graphviz', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"

"""servegraph: compile multi-model inference pipelines into Ray Serve applications.

The public API is re-exported lazily (PEP 562), so `import servegraph` is cheap and pytest's
collection does not import the package a second time under another name.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "deployment": "dag", "batch": "dag", "map": "dag", "InputNode": "dag", "Graph": "dag",
    "multiplexed": "dag", "multiplexed_model_id": "dag",
    "switch": "dag", "when": "dag", "split": "dag", "fallback": "dag", "shadow": "dag",
    "HttpRequest": "dag", "Upload": "dag", "App": "dag",
    "graphs": "web.front", "Graphs": "web.front", "CompiledApp": "compiler",
    "AppHandle": "serving.apphandle",
    "compile": "compiler", "CompiledPipeline": "compiler", "ClusterSpec": "compiler",
    "NodeSpec": "compiler", "detect_cluster": "serving.cluster",
    "run_local": "executors.local", "LocalExecutor": "executors.local",
    "serve": "serving", "connect": "serving", "PipelineHandle": "serving.handle",
    "profile": "serving.profile", "render": "visualize",
    "PipelineError": "errors", "CompileError": "errors", "BindError": "errors",
    "OptionsError": "errors", "TypeMismatchError": "errors", "StageError": "errors",
    "InputError": "errors", "EdgeTypeError": "errors", "DeployError": "errors",
    "StageTimeoutError": "errors", "DeadlineError": "errors",
    "PackingError": "errors", "CapacityError": "errors",
    "Profile": "compiler.profile", "Target": "compiler.profile",
}

__all__ = sorted(_EXPORTS)
_SUBMODULES = ("testing",)  # `sg.testing.raises(...)` without importing it first


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'servegraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{target}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public API, not this module's own imports nor the subpackages loaded so far."""
    return sorted({*__all__, "__version__", *_SUBMODULES})


def _show_diagrams_in_ipython() -> None:
    """Inside IPython or Jupyter, graphs, apps and plans display as their diagram: the
    formatters live in `visualize.notebook` (`dag/` and `compiler/` cannot import
    `visualize/`), registered on the running shell here. Elsewhere nothing more is imported."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)()
    if shell is not None and hasattr(shell, "display_formatter"):
        importlib.import_module(f"{__name__}.visualize.notebook").register(shell)


_show_diagrams_in_ipython()

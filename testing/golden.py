"""Golden files of a compiled plan and its Mermaid diagram, so a change to a graph shows up in
review as a diff of two small text files.

`Golden(directory).check(graph_or_plan, "name")` compares `name.plan.json` and `name.mmd` in
`directory` with the plan compiled now, and with `update=True` (pytest
`--servegraph-update-golden`) writes them instead. The plan is normalised so the files change
only when the pipeline does:

- every source site (`tests/stages.py:78: q = enc.encode.bind(inp.query)`) keeps the file's
  base name and the line's code, not its directory (which depends on where pytest runs) nor its
  line number (which moves with any edit above it);
- memory addresses in the repr of a constant that JSON cannot hold (`0x7f...`) are dropped;
- fields at their defaults are left out, so a new option does not rewrite every golden file.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

from ..compiler import CompiledPipeline, as_plan
from ..dag import Graph

_SITE = re.compile(r"^(?P<file>.+?):(?P<line>\d+)(?:: (?P<code>.*))?$", re.DOTALL)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_WIDTH = 96
UPDATE_HINT = "run pytest with --servegraph-update-golden to accept the new version"


def normalized_plan(graph_or_plan: Graph | CompiledPipeline) -> str:
    """The plan as stable JSON text (see the module docstring)."""
    data = as_plan(graph_or_plan).model_dump(mode="json", exclude_defaults=True)
    return _dump(_normalise(data)) + "\n"


def _dump(value: Any, indent: str = "") -> str:
    """JSON, indented, with every list or object that fits on one line kept on one line."""
    flat = json.dumps(value, ensure_ascii=False)
    if len(indent) + len(flat) <= _WIDTH or not isinstance(value, (dict, list)) or not value:
        return flat
    inner = indent + "  "
    if isinstance(value, list):
        items = [inner + _dump(item, inner) for item in value]
        return "[\n" + ",\n".join(items) + f"\n{indent}]"
    items = [f"{inner}{json.dumps(key)}: {_dump(item, inner)}" for key, item in value.items()]
    return "{\n" + ",\n".join(items) + f"\n{indent}}}"


def normalized_site(site: str) -> str:
    """`dir/file.py:12: code` -> `file.py: code`."""
    match = _SITE.match(site)
    if match is None:
        return site
    base = os.path.basename(match["file"])
    return f"{base}: {match['code']}" if match["code"] else base


def _normalise(value: Any, key: str | None = None) -> Any:
    if isinstance(value, dict):
        return {k: _normalise(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    if isinstance(value, str):
        if key == "site":
            return normalized_site(value)
        return _ADDRESS.sub("", value)
    return value


class Golden:
    """Golden files under `directory` (beside the test module: `golden/`)."""

    def __init__(self, directory: str | os.PathLike[str], *, update: bool = False) -> None:
        self.directory = Path(directory)
        self.update = update

    def check(self, graph_or_plan: Graph | CompiledPipeline, name: str) -> None:
        """Compare (or, updating, write) `name.plan.json` and `name.mmd`."""
        from ..visualize import render

        plan = as_plan(graph_or_plan)
        self.compare(f"{name}.plan.json", normalized_plan(plan))
        self.compare(f"{name}.mmd", render(plan, format="mmd").decode())

    def compare(self, filename: str, text: str) -> None:
        path = self.directory / filename
        if self.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
            return
        if not path.exists():
            raise AssertionError(f"golden file {path} does not exist: {UPDATE_HINT}")
        expected = path.read_text()
        if expected != text:
            diff = "".join(difflib.unified_diff(
                expected.splitlines(keepends=True), text.splitlines(keepends=True),
                fromfile=f"{filename} (golden)", tofile=f"{filename} (now)"))
            raise AssertionError(f"{path} differs from the pipeline compiled now:\n{diff}"
                                 f"{UPDATE_HINT}")

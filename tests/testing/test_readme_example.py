"""The README's "A complete example" (Testing pipelines), run as it is written: its `qa.py` and
`test_qa.py` blocks are copied out of README.md into a `pytester` directory and run there. The
embedder asks for `gpu_memory`, and no test gives a cluster spec: every executor must pass."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
# a caption naming the file, then the next Python block
FILE_BLOCK = re.compile(r"\(`(\w+)\.py`\).*?```python\n(.*?)```", re.DOTALL)


def readme_files() -> dict[str, str]:
    """{"qa": ..., "test_qa": ...}: the example's two files as the README shows them."""
    section = README.read_text().split("### A complete example", 1)[1].split("\n### ", 1)[0]
    files = dict(FILE_BLOCK.findall(section))
    assert sorted(files) == ["qa", "test_qa"], "the README's example lost a file caption"
    return files


@pytest.fixture
def example(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("""
        [pytest]
        asyncio_default_fixture_loop_scope = function
        filterwarnings =
            ignore:Module already imported so cannot be rewritten. __main__
    """)
    pytester.makepyfile(**readme_files())
    pytester.syspathinsert()
    return pytester


def test_the_readme_example_passes_on_the_local_executors(example: pytest.Pytester) -> None:
    first = example.runpytest("-m", "not ray", "--servegraph-update-golden")
    first.assert_outcomes(passed=13, deselected=5)
    plan = json.loads((example.path / "golden" / "qa.plan.json").read_text())
    embedder = next(d for d in plan["deployments"] if d["name"] == "Embedder")
    assert embedder["resources"]["gpus"] is None  # no cluster spec: the fraction is unknown
    assert embedder["resources"]["gpu_memory"] == 2 * 2**30
    # what the update run wrote now compares equal; only the golden test reads it (the run
    # above ran every other test as this one would: the flag changes golden.check alone)
    again = example.runpytest("-m", "not ray", "-k", "test_the_plan_is_reviewed")
    again.assert_outcomes(passed=1, deselected=17)


@pytest.mark.ray
def test_the_readme_example_passes_on_ray(example: pytest.Pytester) -> None:
    """In a process of its own, which starts its own Ray (the workers import the example's
    modules from the driver's path)."""
    ran = example.runpytest_subprocess("-m", "ray", timeout=600)
    ran.assert_outcomes(passed=5, deselected=13)

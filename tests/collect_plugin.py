"""A pytest plugin (loaded with `-p tests.collect_plugin`): collect the repository root as a
plain directory. The root is the package `servegraph`; collected as a pytest `Package`, its
`__init__.py` would be imported a second time, as a module named after the checkout folder."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if path == Path(parent.config.rootpath):
        return pytest.Dir.from_parent(parent, path=path)
    return None

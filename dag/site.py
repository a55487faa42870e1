"""Find the user's source line for a call into servegraph (torch.fx keeps the same for errors)."""

from __future__ import annotations

import linecache
import os
import sys

from ..errors import SourceSite

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# servegraph's own machinery; frames in pipelines/, tests/ and benchmarks/ are user code.
_INTERNAL = tuple(os.path.join(_PACKAGE, part) for part in
                  ("dag" + os.sep, "compiler" + os.sep, "executors" + os.sep, "web" + os.sep,
                   "serving" + os.sep, "visualize" + os.sep, "testing" + os.sep,
                   "cli" + os.sep, "__init__.py", "errors.py"))


def user_site() -> SourceSite:
    """The first frame outside servegraph's machinery: where the user called bind, map,
    deployment or compile."""
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame = frame.f_back
    if frame is None:
        return SourceSite("<unknown>", 0, "")
    filename = frame.f_code.co_filename
    code = linecache.getline(filename, frame.f_lineno).strip()
    return SourceSite(_short_path(filename), frame.f_lineno, code)


def _short_path(filename: str) -> str:
    """Paths relative to the working directory when below it, so messages stay readable."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith("..") else rel

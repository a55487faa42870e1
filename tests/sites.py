"""Where the user wrote something, as servegraph's errors name it: `path:line: code`."""

from __future__ import annotations

import os


def at(module_file: str, code: str) -> str:
    """`path:line: code` for the one line of `module_file` that reads `code`."""
    with open(module_file) as handle:
        lines = [number for number, text in enumerate(handle, 1) if text.strip() == code]
    assert len(lines) == 1, f"{code!r} must appear once in {module_file}"
    return f"{os.path.relpath(module_file)}:{lines[0]}: {code}"

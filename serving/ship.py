"""Stage code from anywhere: the classes and functions a plan runs travel to its replicas by
value when the replicas could not import them by name.

The plan reaches every replica pickled (Serve pickles the deployments' init arguments), memory
and all, and cloudpickle pickles a class by reference to its module unless told otherwise. A
module the replicas cannot import (a test module that pytest put on this process's `sys.path`
only, a script run from another directory) then fails in every replica's constructor, after
Serve's retries. Ray's workers import what a fresh interpreter here imports, plus the directory
Ray was started from; any other module holding a stage is registered with cloudpickle to be
pickled by value. `__main__` needs nothing: cloudpickle pickles its objects by value already.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

from ray import cloudpickle

from ..compiler import CompiledPipeline
from ..errors import DeployError


def ship_stage_code(plan: CompiledPipeline, extra: Iterable[Any] | None = None) -> list[str]:
    """Register by value every module of the plan's stage objects (and of `extra` objects:
    an `sg.App`'s route functions, `front_code`) that the replicas cannot import by name;
    the modules registered. Raises DeployError naming the stage whose code cannot be
    pickled at all, before Serve tries."""
    objects = [*plan.memory.objects.values(), *(extra or ())]
    modules = {getattr(target, "__module__", None) or "" for target in objects}
    modules = {name for name in modules if name in sys.modules and name != "__main__"}
    found = importable_by_workers(tuple(sorted({name.partition(".")[0] for name in modules})))
    shipped = sorted(name for name in modules if name.partition(".")[0] not in found)
    for name in shipped:
        cloudpickle.register_pickle_by_value(sys.modules[name])
    for path, target in plan.memory.objects.items():
        try:
            cloudpickle.dumps(target)
        except Exception as exc:
            raise DeployError(
                f"{_what(plan, path)} cannot be sent to the replicas: pickling it failed "
                f"({type(exc).__name__}: {exc}); define it at the top level of a module, "
                "holding no open files, locks or sockets (build those in __init__)") from exc
    return shipped


def front_code(front: Any) -> list[Any]:
    """The functions behind a user's ASGI app (FastAPI's): its routes' endpoints and their
    dependencies, whose modules must reach the ingress replicas with the app."""
    found: list[Any] = []
    pending = [getattr(route, "dependant", None) for route in getattr(front, "routes", ())]
    found += [route.endpoint for route in getattr(front, "routes", ())
              if callable(getattr(route, "endpoint", None))]
    while pending:
        dependant = pending.pop()
        if dependant is None:
            continue
        if callable(dependant.call):
            found.append(dependant.call)
        pending.extend(dependant.dependencies)
    return found


@functools.cache
def importable_by_workers(packages: tuple[str, ...]) -> frozenset[str]:
    """Those of the top-level `packages` a fresh interpreter of this Python, environment and
    working directory finds (as a Ray worker started from here does: site-packages, `.pth`
    entries and editable installs, PYTHONPATH, and the directory Ray was started from)."""
    if not packages:
        return frozenset()
    probe = ("import importlib.util, json, sys; print(json.dumps([name for name in sys.argv[1:] "
             "if importlib.util.find_spec(name) is not None]))")
    listed = subprocess.run([sys.executable, "-c", probe, *packages], capture_output=True,
                            text=True, check=True, timeout=60, cwd=os.getcwd()).stdout
    return frozenset(json.loads(listed))


def _what(plan: CompiledPipeline, path: str) -> str:
    """The stage an import path is the target of, for a message."""
    names = [stage.name for stage in plan.deployments if stage.import_path == path]
    return f"stage {names[0]!r} ({path})" if names else repr(path)


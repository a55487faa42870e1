"""Ray's private attributes servegraph reads (`executors/ray/ray_private.py`): each one exists in
the installed Ray, and no other module of the package reads one. A Ray upgrade that moves one
fails here, naming it, rather than deep inside a served request."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys

import pytest

from servegraph.executors.ray import ray_private
from tests.test_imports import MODULES

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize(("module", "attribute"), ray_private.PRIVATE_NAMES)
def test_every_private_name_exists_in_the_installed_ray(module: str, attribute: str) -> None:
    assert hasattr(importlib.import_module(module), attribute), (
        f"Ray moved {module}.{attribute}: update servegraph/executors/ray/ray_private.py")


def test_the_readers_work_outside_serve() -> None:
    """Outside a replica and without a Ray connected (a fresh process: this session's Ray may
    be up): defaults, and no Ray started or joined."""
    code = ("import re, ray; from servegraph.executors.ray import ray_private as p; "
            "print(isinstance(p.router_in_separate_loop(), bool), p.http_url('/x'), "
            "bool(re.fullmatch('[0-9a-f]{32}', p.serve_request_id())), p.route_prefix_of('x'), "
            "ray.is_initialized())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.stdout.split() == ["True", "http://127.0.0.1:8000/x", "True", "None",
                                  "False"]


PRIVATE = re.compile(r"ray\.[\w.]*\._\w+|from ray[\w.]* import _\w+|\._(deployment_config|"
                     r"replica_config|get_global_client|get_serve_request_context|private)\b")


def test_no_other_module_reads_ray_private_names() -> None:
    readers = sorted(name for name, module in MODULES.items()
                     if PRIVATE.search(module.path.read_text()))
    assert readers == ["servegraph.executors.ray.ray_private"]

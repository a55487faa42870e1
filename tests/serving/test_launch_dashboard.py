"""The embedded Ray's dashboard: asked of `ray.init` only when wanted, and its URL, as Ray
reports it, returned with a scheme. `ray.init` is recorded, never called."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

import servegraph as sg
from servegraph.serving import launch
from servegraph.serving.env import EMBEDDED_ENV
from tests import cli_graphs


@pytest.fixture
def ray_init(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """No Ray running nor at RAY_ADDRESS, servegraph's switches unset; `ray.init` answers as
    Ray does, with the host and port of the dashboard it started (none when it started none)."""
    calls: list[dict[str, Any]] = []

    def init(**kwargs: Any) -> SimpleNamespace:
        calls.append(kwargs)
        return SimpleNamespace(dashboard_url="127.0.0.1:8266" if kwargs["include_dashboard"]
                               else "")

    monkeypatch.setattr(launch.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(launch.ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name in EMBEDDED_ENV:  # set by `ensure_ray`; monkeypatch restores them afterwards
        monkeypatch.delenv(name, raising=False)
    return calls


def test_the_dashboard_starts_only_when_asked_and_its_url_is_returned(
        ray_init: list[dict[str, Any]]) -> None:
    plan = sg.compile(cli_graphs.good)
    assert launch.ensure_ray(plan, dashboard=True) == "http://127.0.0.1:8266"
    assert launch.ensure_ray(plan) is None
    assert [call["include_dashboard"] for call in ray_init] == [True, False]


def test_a_ray_servegraph_did_not_start_gives_no_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(launch, "warn_missing_switches", lambda plan, which: None)
    assert launch.ensure_ray(sg.compile(cli_graphs.good), dashboard=True) is None

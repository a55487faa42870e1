"""Fixtures of the compiler's tests."""

from __future__ import annotations

import pytest

from servegraph.compiler import capacity as model


@pytest.fixture
def serve_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve's own costs as the capacity tests' hand calculations take them (the model's
    fitted constants move when it is refitted; the arithmetic must not)."""
    monkeypatch.setattr(model, "REQUEST_CPU_MS", 2.2)
    monkeypatch.setattr(model, "CALL_CPU_MS", 2.5)
    monkeypatch.setattr(model, "DRIVER_SHARE", 0.7)
    monkeypatch.setattr(model, "SERVED_WORK_FACTOR", 1.0)

"""Shared fixtures. Ray-backed tests (marked `ray`) share one Ray instance and one Serve
instance per pytest session: servegraph's pytest plugin (`servegraph.testing.plugin`) starts it
on first use, for `ray_serve` here and for the `pipeline` fixture's `ray` runs alike, and stops
it at the end, even on failure."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

RAY_FIXTURES = ("ray_serve", "servegraph_ray")


@pytest.fixture(scope="session")
def ray_serve(servegraph_ray: int) -> int:
    """The session's one local Ray with Serve (logical CPUs and GPUs: fractional GPU
    scheduling needs no GPU); Serve's HTTP port."""
    return servegraph_ray


@pytest.fixture(scope="session")
def grpc_port(ray_serve: int, servegraph_grpc_port: int) -> int:
    """The session's Serve's gRPC port (every servegraph graph's service is there)."""
    return servegraph_grpc_port


@pytest.fixture
def deploy(ray_serve: int) -> Iterator[Callable[..., Any]]:
    """`deploy(graph_or_plan, name=...)` -> a PipelineHandle, deleted after the test without
    waiting for its replicas' graceful shutdown (Serve's 2 s wait loop, then a 1 s poll):
    Serve no longer routes to an application being deleted, leaves its route prefix free, and
    lets a later `serve.run` of the same name replace it; the session's logical CPUs hold the
    replicas still stopping."""
    import servegraph as sg

    handles: list[Any] = []

    def _deploy(graph_or_plan: Any, **kwargs: Any) -> Any:
        handle = sg.serve(graph_or_plan, **kwargs)
        handles.append(handle)
        return handle

    try:
        yield _deploy
    finally:
        for handle in handles:
            handle.shutdown(wait=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses_ray = any(name in getattr(item, "fixturenames", ()) for name in RAY_FIXTURES)
        if uses_ray and not item.get_closest_marker("ray"):
            raise pytest.UsageError(f"{item.nodeid} uses Ray: mark it @pytest.mark.ray")

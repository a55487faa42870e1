"""Shared fixtures. Ray-backed tests (marked `ray`) share one Ray instance and one Serve
instance per pytest session, started on first use and stopped at the end, even on failure."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[int]:
    """One local Ray (logical CPUs and GPUs: fractional GPU scheduling needs no GPU) with Serve
    listening on a free port; yields that port."""
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=16, num_gpus=4, include_dashboard=False,
             configure_logging=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture
def deploy(ray_serve: int) -> Iterator[Callable[..., Any]]:
    """`deploy(graph_or_plan, name=...)` -> a PipelineHandle, deleted after the test."""
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
            handle.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "ray_serve" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("ray"):
            raise pytest.UsageError(f"{item.nodeid} uses Ray: mark it @pytest.mark.ray")

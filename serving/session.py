"""Ray and Serve for a test session (the pytest plugin's `servegraph_ray` fixture): one per
session, so every Ray-backed test shares them."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

import ray
from ray import serve

from ..compiler.emit.serve_config import grpc_options
from .env import SESSION_ENV

DEFAULT_GRPC_PORT = 9000  # Serve's, for a cluster whose Serve this session starts
# Ray's metrics agent exports what processes record every 10 s by default; every second here,
# so that a test (or `servegraph doctor`) reads a request's metrics soon after it
METRICS_ENV = {"RAY_metrics_report_interval_ms": "1000"}


@contextlib.contextmanager
def serve_session(*, num_cpus: int, num_gpus: int) -> Iterator[int]:
    """Connect to `RAY_ADDRESS` when set (and leave that cluster running), or start a local
    Ray with these logical CPUs and GPUs (GPUs need not exist: fractional GPU scheduling is
    bookkeeping) with Serve on a free port, both stopped at the end even on failure. A Ray
    this process already started is used as it is. Yields Serve's HTTP port. Serve's gRPC
    proxy serves every servegraph graph on a free port too (gRPC options are fixed when
    Serve starts, so the session turns it on for all; `launch.serve_grpc_port()` reads it)."""
    address = os.environ.get("RAY_ADDRESS")
    ours = not ray.is_initialized() and not address
    if not ray.is_initialized():
        if address:
            ray.init(address=address, configure_logging=False)
        else:
            # Serve places replicas as planned, and its proxy names a dead ingress
            for name, value in {**SESSION_ENV, **METRICS_ENV}.items():
                os.environ.setdefault(name, value)
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                     include_dashboard=False, configure_logging=False)
    try:
        port = _free_port() if ours else 8000
        serve.start(http_options={"host": "127.0.0.1", "port": port},
                    grpc_options=grpc_options(_free_port() if ours else DEFAULT_GRPC_PORT))
        yield port
    finally:
        if ours:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

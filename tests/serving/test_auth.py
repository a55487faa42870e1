"""`serving.auth.check_token` without a cluster: the GCS call it makes exists in the installed
Ray, and what it leaves to `ray.init` (a Ray Client address, nothing listening) it leaves at
once. A cluster that wants a token is `tests/cli/test_cli_cluster.py`'s (a real `ray start`)."""

from __future__ import annotations

import socket
import time

from servegraph.serving.auth import GCS_PROBE, check_token


def test_the_probe_is_a_gcs_call_of_the_installed_ray() -> None:
    from ray.core.generated import gcs_service_pb2

    service, method = GCS_PROBE.strip("/").rsplit("/", 1)
    found = gcs_service_pb2.DESCRIPTOR.services_by_name[service.removeprefix("ray.rpc.")]
    assert method in found.methods_by_name, f"Ray moved {GCS_PROBE}: update serving/auth.py"


def test_what_ray_init_reports_itself_passes_at_once() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    check_token(f"127.0.0.1:{port}")
    check_token("ray://127.0.0.1:10001")
    check_token("auto")
    assert time.monotonic() - started < 3

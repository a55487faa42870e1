"""The one place servegraph reads Ray's private attributes (names starting with `_`, or
modules under `ray.serve._private`). Each is read through `getattr` with the name spelled once
in `PRIVATE_NAMES`, and `tests/executors/test_ray_private.py` fails loudly, naming it, when a
Ray upgrade moves one. It sits under `executors/ray`, the lowest layer that imports Ray, so the
driver and `serving` both read through it.
"""

from __future__ import annotations

import importlib
import uuid
from typing import Any

# (module, attribute): what this module reads, checked against the installed Ray by a test
PRIVATE_NAMES = (
    ("ray.serve._private.constants", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"),
    ("ray.serve.context", "_get_global_client"),
    ("ray.serve.context", "_get_serve_request_context"),
    ("ray._raylet", "AuthenticationTokenLoader"),
)
DEFAULT_HTTP_PORT = 8000


def read(module: str, attribute: str) -> Any:
    """One of `PRIVATE_NAMES`, as the installed Ray has it."""
    return getattr(importlib.import_module(module), attribute)


def router_in_separate_loop() -> bool:
    """Whether this process's handles route on Serve's own loop thread (Serve's default), or,
    imported in its throughput-optimised mode, on the loop they were first used in."""
    return bool(read(*PRIVATE_NAMES[0]))


def http_url(route_prefix: str) -> str:
    """The URL of `route_prefix` on the HTTP proxy of the Serve instance this process is
    connected to (Serve's default port when none runs; it never starts or joins a Ray)."""
    import ray

    client = read(*PRIVATE_NAMES[1])(raise_if_no_controller_running=False) \
        if ray.is_initialized() else None
    if client is None:
        return f"http://127.0.0.1:{DEFAULT_HTTP_PORT}{route_prefix}"
    config = client.http_config
    host = "127.0.0.1" if config.host in ("0.0.0.0", "", None) else config.host
    return f"http://{host}:{config.port}{route_prefix}"


def route_prefix_of(app_name: str) -> str | None:
    """The route prefix Serve serves application `app_name` at, as Serve's controller has it
    (None: no such application, none with an HTTP route, or no Ray connected)."""
    import ray

    client = read(*PRIVATE_NAMES[1])(raise_if_no_controller_running=False) \
        if ray.is_initialized() else None
    details = client.get_serve_details() if client is not None else {}
    return (details.get("applications", {}).get(app_name) or {}).get("route_prefix")


def serve_request_id() -> str:
    """The id Serve's proxy gave the HTTP request this replica is handling (the client's
    `x-request-id` when it sent one); a new one where the context holds none."""
    return read(*PRIVATE_NAMES[2])().request_id or uuid.uuid4().hex


def auth_token_header() -> dict[str, str]:
    """The `authorization` header Ray's gRPC calls carry in token mode: this machine's token
    (`RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or `~/.ray/auth_token`), or none. Raises Ray's
    `AuthenticationError` when a token file is named but cannot be read."""
    loader = read(*PRIVATE_NAMES[3]).instance()
    if not loader.has_token(ignore_auth_mode=True):
        return {}
    return dict(loader.get_token_for_http_header())

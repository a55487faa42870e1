"""Ray's token authentication, checked before connecting to a cluster.

Ray 2.60's `ray start --head` turns token authentication on whenever a token exists on the
machine (`~/.ray/auth_token`, which any `ray.init()` of a local Ray writes), while a process
that connects to an explicit address sends a token only when `RAY_AUTH_MODE=token`. Without
it, `ray.init` retries for 20 s, logging `InvalidAuthToken` once a second, and then fails
with an error that names neither cause nor fix. `check_token` asks the cluster's GCS once,
as `ray.init` would (with the token Ray would send, if any), and turns a refusal into one
`ConnectionError` that says what to do, in milliseconds.
"""

from __future__ import annotations

import os

import grpc
from ray.exceptions import AuthenticationError

from ..executors.ray.ray_private import auth_token_header

AUTH_MODE = "RAY_AUTH_MODE"
# the GCS call `ray.init` makes first (`ray.core.generated.gcs_service_pb2`; a test checks it)
GCS_PROBE = "/ray.rpc.NodeInfoGcsService/GetClusterId"
WHERE_TOKENS_ARE = ("RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (`ray "
                    "get-auth-token` on the head prints it)")


def check_token(address: str, *, timeout_s: float = 5.0) -> None:
    """Raise ConnectionError, naming the fix, when the Ray cluster at `address` (host:port of
    its GCS) refuses this process's token, or the lack of one. Anything else (nothing
    listening, a `ray://` client address) is left for `ray.init` to report."""
    if "://" in address or ":" not in address:
        return
    sends_token = os.environ.get(AUTH_MODE, "").lower() == "token"
    metadata = tuple(token_header(address).items()) if sends_token else ()
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary(GCS_PROBE)(b"", timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:  # type: ignore[attr-defined]
                return
            if sends_token:
                raise ConnectionError(
                    f"the Ray cluster at {address} refused this process's auth token "
                    f"(RAY_AUTH_MODE=token): use the cluster's token, from "
                    f"{WHERE_TOKENS_ARE}") from None
            raise ConnectionError(
                f"the Ray cluster at {address} requires an auth token (`ray start` turns "
                "token authentication on where a token exists): export RAY_AUTH_MODE=token, "
                f"with the token in {WHERE_TOKENS_ARE}, or start the cluster with "
                "RAY_AUTH_MODE=disabled") from None


def token_header(address: str) -> dict[str, str]:
    """The header Ray sends in token mode; ConnectionError naming the fix when it has none."""
    try:
        header = auth_token_header()
    except AuthenticationError as exc:  # a token file Ray cannot read
        raise ConnectionError(f"cannot read the auth token for {address}: {exc}") from None
    if not header:
        raise ConnectionError(
            f"RAY_AUTH_MODE=token, but this machine has no auth token for the Ray cluster at "
            f"{address}: put it in {WHERE_TOKENS_ARE}")
    return header

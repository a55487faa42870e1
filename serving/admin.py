"""Operating running applications from outside them: connecting to a Ray cluster, reading Serve's
status, deleting an application, stopping Serve. The CLI's `status`,
`shutdown`, `run` and `deploy` verbs go through here, so that Ray is imported only under
`serving` and `executors/ray`.
"""

from __future__ import annotations

from typing import Any

import ray
from ray import serve
from ray.exceptions import AuthenticationError

from .auth import check_token


def connect(address: str, *, quiet: bool = True) -> None:
    """Attach this process to the Ray cluster at `address`, once; `quiet` keeps Ray's and the
    replicas' logs off this terminal. Raises ConnectionError when it cannot; at once, naming
    the fix, when the cluster wants an auth token this process does not send (`auth`)."""
    if ray.is_initialized():
        return
    check_token(address)
    try:
        if quiet:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(address=address)
    except (ConnectionError, RuntimeError, AuthenticationError) as exc:
        raise ConnectionError(str(exc)) from exc


def is_connected() -> bool:
    return bool(ray.is_initialized())


def applications() -> dict[str, Any]:
    """Serve's status of each application: `status`, and per deployment `status` and
    `replica_states` (Serve's `ApplicationStatusOverview`s, by name)."""
    return dict(serve.status().applications)


def delete(name: str) -> None:
    """Delete one Serve application (Ray and Serve keep running)."""
    serve.delete(name)


def shutdown_serve() -> None:
    """Stop Serve on the connected cluster (every application)."""
    serve.shutdown()


def free_resources() -> dict[str, float]:
    """The cluster's resources no actor or task holds now (CPU, GPU, custom ones)."""
    return {name: float(amount) for name, amount in ray.available_resources().items()}

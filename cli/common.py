"""What the verbs share: the one error a command line can make, the cluster the flags describe,
connecting to a running Ray, writing an output file, and the spinner shown while Serve deploys.

Ray is reached through `serving.admin` only (Ray is imported under `serving` and `executors`,
never here), and only inside the functions that need it, so `check` or `--help` start fast.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from ..errors import PipelineError

if TYPE_CHECKING:
    from ..compiler import ClusterSpec


class UsageError(PipelineError):
    """The command line names something that cannot be loaded."""


def cluster_of(args: argparse.Namespace) -> ClusterSpec | None:
    """The `ClusterSpec` the flags give (parsed by `parser.check_cluster_flags`), or read from
    the running Ray cluster with `--detect-cluster`; None when neither."""
    if not args.detect_cluster:
        return args.cluster
    from ..serving.cluster import detect_cluster

    connect(args.address, quiet=args.verb != "run")
    return detect_cluster(gpu_memory=args.gpu_memory)


def connect(address: str | None, *, quiet: bool = True) -> None:
    """Attach to an existing Ray cluster (`--address`, else `RAY_ADDRESS`), once; `quiet`
    keeps Ray's and the replicas' logs off this terminal."""
    from ..serving import admin

    if admin.is_connected():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UsageError("no cluster to talk to: pass --address (e.g. 127.0.0.1:6379) or set "
                         "RAY_ADDRESS")
    try:
        admin.connect(address, quiet=quiet)
    except ConnectionError as exc:
        raise UsageError(f"cannot connect to Ray at {address}: {exc}") from exc


def write_file(path: str, text: str) -> None:
    """Write an output the user named; a path that cannot be written is their error (exit 1,
    one line), not a traceback."""
    try:
        with open(path, "w") as handle:
            handle.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc


def waiting(message: str) -> Any:
    """A spinner on stderr while Serve brings deployments up (silent when not a terminal)."""
    from rich.console import Console

    return Console(stderr=True).status(message)


def load_profile(path: str) -> Any:
    """The `Profile` in `path`, or the user's error saying why not."""
    from pydantic import ValidationError

    from ..compiler.profile import Profile

    try:
        with open(path) as handle:
            return Profile.model_validate_json(handle.read())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    except ValidationError as exc:
        raise UsageError(f"{path} is not a profile written by `servegraph profile`: "
                         f"{exc.errors()[0]['msg']}") from exc

"""The capacity pass's errors: a target the cluster spec cannot serve, in `PackingError`'s
style: what the target needs, what the cluster has, the bottleneck stage, and what would
reach the target (how many more CPUs or GPUs, of what size) or the most the cluster serves.
The pass works the numbers out; these only word them, so each message is tested exactly."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import CapacityError
from ..cluster import format_bytes
from ..profile import Target

PASS = "capacity"


@dataclass(frozen=True)
class Bottleneck:
    """The stage that asks the most of what ran short: its replicas, the CPUs (or GPU
    fraction) of one, and what one replica serves (pipeline requests a second)."""

    stage: str
    replicas: int
    each: float
    replica_rps: float


def _plural(count: float, word: str) -> str:
    return f"{count:g} {word}{'' if count == 1 else 's'}"


def cpus_short(target: Target, need: float, cpus: float, utilisation: float,
               neck: Bottleneck, best: float) -> CapacityError:
    return CapacityError(
        f"{target.describe()} needs {_plural(need, 'CPU')} for its stages and the cluster "
        f"has {cpus:g}; the bottleneck is {neck.replicas} replica"
        f"{'' if neck.replicas == 1 else 's'} x {_plural(neck.each, 'CPU')} at "
        f"{utilisation:.0%} busy (one replica serves {neck.replica_rps:.3g} req/s)",
        stage=neck.stage,
        hint=f"give the cluster {need - cpus:g} more CPUs (sg.ClusterSpec(cpus={need:g})), "
        f"or aim at {best:.3g} req/s, the most it serves",
    )


def gpus_short(target: Target, need: float, gpus: float, gpu_memory: int | None,
               neck: Bottleneck, best: float) -> CapacityError:
    whole = math.ceil(need - 1e-9)
    more = math.ceil(whole - gpus - 1e-9)
    return CapacityError(
        f"{target.describe()} needs {_plural(whole, 'GPU')} and the cluster has {gpus:g}; the "
        f"bottleneck is {neck.replicas} replica{'' if neck.replicas == 1 else 's'} x "
        f"{neck.each:g} GPU (one replica serves {neck.replica_rps:.3g} req/s)",
        stage=neck.stage,
        hint=f"give the cluster {more} more GPU{'' if more == 1 else 's'} of "
        f"{format_bytes(gpu_memory)}, or aim at {best:.3g} req/s, the most it serves",
    )


def work_short(target: Target, stage_ms: float, serve_ms: float, cpus: float,
               utilisation: float, neck: str, neck_ms: float, best: float) -> CapacityError:
    need = target.rps * (stage_ms + serve_ms) / (1000 * utilisation)
    return CapacityError(
        f"{target.describe()} needs {need:.3g} CPUs busy ({stage_ms:.3g} ms of stage work and "
        f"{serve_ms:.3g} ms of Serve's calls per request, at {utilisation:.0%} busy) and the "
        f"cluster has {cpus:g}; the bottleneck is this stage's {neck_ms:.3g} ms per request",
        stage=neck,
        hint=f"give the cluster {math.ceil(need - cpus - 1e-9)} more CPUs, or aim at "
        f"{best:.3g} req/s, the most it serves",
    )


def driver_short(target: Target, replicas: int, cpus: float, driver: str, driver_ms: float,
                 best: float) -> CapacityError:
    return CapacityError(
        f"{target.describe()} needs {replicas} driver replicas ({driver_ms:.3g} ms of CPU per "
        f"request each) and the cluster's {cpus:g} CPUs run at most {max(1, math.floor(cpus))}",
        stage=driver,
        hint=f"give the cluster {replicas - max(1, math.floor(cpus))} more CPUs, or aim at "
        f"{best:.3g} req/s, the most it serves",
    )


def p99_out_of_reach(target: Target, p99_ms: float, neck: str, neck_ms: float,
                     call_ms: float, wait_ms: float) -> CapacityError:
    return CapacityError(
        f"{target.describe()} is out of reach: the stages' p99 is {p99_ms:.3g} ms even at 20% "
        f"busy; the slowest is this stage's {neck_ms:.3g} ms ({call_ms:.3g} ms a call, "
        f"{wait_ms:g} ms batch wait)",
        stage=neck,
        hint=f"raise p99_ms to {math.ceil(p99_ms)} or more, or give this stage smaller "
        "batches (max_batch_size, batch_wait_timeout_s)",
    )

"""`servegraph doctor`: what a live application's stages are doing, which one holds it back,
and what to change. Serve's own status is per deployment and says nothing of queues or
latency; servegraph's metrics (`executors/ray/metrics`, read by `observe`) say how busy each
stage is, and the plan says what each stage asked for, so the three together name the fix.

`diagnose` is pure: (per-stage figures, Serve's deployment states, the plan, the cluster's
free resources, an optional profile) in, a `Report` out; `examine` gathers those inputs from
the connected cluster. Utilisation is calls in flight over what the running replicas admit
(`max_ongoing_requests` each): at 100% Serve queues further calls at the caller's handle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..compiler.plan import StagePlan
from ..compiler.profile import Profile
from .observe import StageFigures, bucket_quantile

SERVE_DEFAULT_MAX_ONGOING = 5  # Serve's max_ongoing_requests when a stage sets none
PENDING_STATES = ("STARTING", "PENDING_MIGRATION", "RECOVERING")


@dataclass(frozen=True)
class Thresholds:
    """When a figure becomes a finding."""

    busy: float = 0.9         # utilisation of a saturated stage
    target: float = 0.7       # utilisation a raised num_replicas should bring it to
    cold_start_s: float = 10.0
    slower_than_profile: float = 3.0  # observed p50 over profiled service time


@dataclass(frozen=True)
class DeploymentState:
    """Serve's status of one deployment (`serve.status()`), as plain data."""

    status: str
    message: str = ""
    replica_states: dict[str, int] = field(default_factory=dict)

    @property
    def running(self) -> int:
        return self.replica_states.get("RUNNING", 0)

    @property
    def pending(self) -> int:
        return sum(self.replica_states.get(state, 0) for state in PENDING_STATES)


@dataclass
class StageRow:
    """One stage's line of the report."""

    stage: str
    replicas: str          # running/target
    calls: int
    p50_ms: float | None
    p99_ms: float | None
    utilisation: float | None
    in_flight: float
    queued: float
    batch_fill: float | None
    errors: int
    cold_start_s: float | None
    profiled_ms: float | None = None


@dataclass(frozen=True)
class Finding:
    stage: str
    kind: str      # saturated, pending, cold_start, restarted, errors, timeouts, unhealthy, slow
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.stage}: {self.message}: {self.fix}"


@dataclass
class Report:
    application: str
    stages: list[StageRow]
    bottleneck: str | None
    findings: list[Finding]
    pipelines: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def diagnose(application: str, figures: dict[str, StageFigures],
             states: dict[str, DeploymentState], stages: list[StagePlan],
             free: dict[str, float], profile: Profile | None = None,
             thresholds: Thresholds = Thresholds()) -> Report:
    """The report of one application (see the module docstring)."""
    rows, findings = [], []
    for stage in stages:
        own = figures.get(stage.name, StageFigures(stage.name))
        state = states.get(stage.name, DeploymentState("UNKNOWN"))
        row = stage_row(stage, own, state, profile)
        rows.append(row)
        findings.extend(stage_findings(stage, own, state, row, free, thresholds))
    busy = [row for row in rows if row.utilisation is not None]
    bottleneck = max(busy, key=lambda r: (r.utilisation or 0.0, r.queued, r.p99_ms or 0.0),
                     default=None)
    return Report(application, rows, bottleneck.stage if bottleneck and
                  (bottleneck.utilisation or bottleneck.queued) else None, findings)


def stage_row(stage: StagePlan, own: StageFigures, state: DeploymentState,
              profile: Profile | None) -> StageRow:
    """Utilisation: calls in the replicas over what they work on at once; the calls beyond
    that wait in a replica's batch queue and count as queued, with Serve's handle queue."""
    works = working_capacity(stage) * max(state.running, 0)
    batch = max((b.max_batch_size for b in stage.batching.values()), default=0)
    mean = own.batch_mean
    return StageRow(
        stage=stage.name, replicas=f"{state.running}/{stage.resources.replicas.start}",
        calls=int(own.calls), p50_ms=own.latency_ms(0.5), p99_ms=own.latency_ms(0.99),
        utilisation=min(own.in_flight, works) / works if works else None,
        in_flight=own.in_flight, queued=own.queued + max(0.0, own.in_flight - works),
        batch_fill=(mean / batch) if batch and mean else None,
        errors=int(sum(own.errors.values())), cold_start_s=own.cold_start_s,
        profiled_ms=profiled_ms(profile, stage.name))


def max_ongoing(stage: StagePlan) -> int:
    return int(stage.options.get("max_ongoing_requests") or SERVE_DEFAULT_MAX_ONGOING)


def working_capacity(stage: StagePlan) -> int:
    """Calls one replica works on at once: what Serve admits (`max_ongoing_requests`), or,
    for an `sg.batch` stage, the items its batches hold (servegraph raises a batched
    stage's limit well above its batch so that batches fill)."""
    batches = [b.max_batch_size * b.max_concurrent_batches for b in stage.batching.values()]
    return min(max_ongoing(stage), sum(batches)) if batches else max_ongoing(stage)


def profiled_ms(profile: Profile | None, stage: str) -> float | None:
    """The profile's single-call service time of the stage (its slowest method)."""
    if profile is None:
        return None
    times = [each.service_ms[0].median_ms for each in profile.methods_of(stage)]
    return max(times) if times else None


def stage_findings(stage: StagePlan, own: StageFigures, state: DeploymentState,
                   row: StageRow, free: dict[str, float], limits: Thresholds) -> list[Finding]:
    found = [saturated(stage, row, free, limits), pending(stage, state, free),
             cold_start(stage, own, limits), restarted(stage, own, state),
             failing(stage, own), slower(stage, row, limits)]
    if state.status in ("UNHEALTHY", "DEPLOY_FAILED"):
        found.append(Finding(stage.name, "unhealthy", f"Serve says {state.status}: "
                             f"{state.message or 'no message'}",
                             f"see `ray logs` for the replicas of {stage.name!r}"))
    return [finding for finding in found if finding is not None]


def saturated(stage: StagePlan, row: StageRow, free: dict[str, float],
              limits: Thresholds) -> Finding | None:
    if row.utilisation is None or (row.utilisation < limits.busy and row.queued < 1):
        return None
    running = max(1, int(row.replicas.split("/")[0]))
    # a step, not the backlog's size: a queue drains once the stage keeps up; doctor again
    wanted = max(running + 1, math.ceil(running * row.utilisation / limits.target))
    extra = needs(stage, wanted - running)
    short = {name: amount - free.get(name, 0.0) for name, amount in extra.items()
             if amount > free.get(name, 0.0) + 1e-9}
    room = "fits on the cluster" if not short else "needs " + ", ".join(
        f"{amount:g} {name}" for name, amount in short.items()) + " more than is free"
    queued = f", {row.queued:.0f} queued" if row.queued >= 1 else ""
    return Finding(stage.name, "saturated",
                   f"{row.utilisation:.0%} busy{queued}",
                   f"raise num_replicas to {wanted} ({room}): "
                   f"@sg.deployment(num_replicas={wanted}) or autoscaling_config "
                   f"max_replicas>={wanted}")


def needs(stage: StagePlan, replicas: int) -> dict[str, float]:
    """The resources `replicas` more replicas of `stage` ask Ray for."""
    actor = stage.options.get("ray_actor_options") or {}
    own = {"CPU": stage.resources.cpus, "GPU": stage.resources.gpus or 0.0,
           **{name: float(amount) for name, amount in (actor.get("resources") or {}).items()}}
    return {name: amount * replicas for name, amount in own.items() if amount}


def pending(stage: StagePlan, state: DeploymentState, free: dict[str, float]) -> Finding | None:
    if not state.pending:
        return None
    one = needs(stage, 1)
    short = {name: amount for name, amount in one.items() if amount > free.get(name, 0.0)}
    wants = ", ".join(f"{amount:g} {name}" for name, amount in one.items())
    has = ", ".join(f"{free.get(name, 0.0):g} {name}" for name in short) or "enough free"
    why = f"needs {wants} per replica, cluster has {has}"
    fix = ("add a node with " + ", ".join(short) + " or lower ray_actor_options"
           if short else "wait for the constructor, or read the replica's log (`ray logs`)")
    message = f"{state.pending} replica(s) pending ({', '.join(state.replica_states)}): {why}"
    if state.message:
        message += f"; Serve: {state.message.splitlines()[0][:160]}"
    return Finding(stage.name, "pending", message, fix)


def cold_start(stage: StagePlan, own: StageFigures, limits: Thresholds) -> Finding | None:
    seconds = own.cold_start_s
    if seconds is None or seconds < limits.cold_start_s:
        return None
    return Finding(stage.name, "cold_start", f"cold start {seconds:.1f} s: model load in "
                   "__init__", "load weights from a node-local cache, or keep replicas warm "
                   "(autoscaling_config min_replicas>=1, no scale to zero)")


def restarted(stage: StagePlan, own: StageFigures, state: DeploymentState) -> Finding | None:
    """More constructors ran than replicas are up or starting: some were replaced."""
    up = state.running + state.pending
    replaced = int(own.replica_starts) - max(up, stage.resources.replicas.start)
    if replaced <= 0 or not own.replica_starts:
        return None
    return Finding(stage.name, "restarted",
                   f"{replaced} replica(s) replaced ({int(own.replica_starts)} started, "
                   f"{state.running} running): killed, crashed or out of memory",
                   "read the dead replica's log (`ray logs`, `dmesg` for the OOM killer); "
                   "if out of memory raise ray_actor_options memory or gpu_memory")


def failing(stage: StagePlan, own: StageFigures) -> Finding | None:
    errors = {kind: n for kind, n in own.errors.items() if n}
    if not errors:
        return None
    kinds = ", ".join(f"{int(n)} {kind}" for kind, n in sorted(errors.items()))
    if own.timeouts:
        return Finding(stage.name, "timeouts", f"{int(own.timeouts)} call(s) past timeout_s "
                       f"({kinds})", f"raise timeout_s (now {stage.timeout_s}) or num_replicas")
    return Finding(stage.name, "errors", f"{int(sum(errors.values()))} failed call(s): "
                   f"{kinds}", "trace one: `handle.trace(payload)` names the input")


def slower(stage: StagePlan, row: StageRow, limits: Thresholds) -> Finding | None:
    if row.profiled_ms is None or row.p50_ms is None or \
            row.p50_ms < limits.slower_than_profile * row.profiled_ms + 1.0:
        return None
    return Finding(stage.name, "slow", f"p50 {row.p50_ms:.1f} ms, profiled "
                   f"{row.profiled_ms:.1f} ms", "check for CPU contention (ray_actor_options "
                   "num_cpus) or a smaller batch than profiled")


def examine(application: str, *, window_s: float = 0.0, profile: Profile | None = None,
            thresholds: Thresholds = Thresholds()) -> Report:
    """Read the connected cluster and diagnose `application`: its plan (from its driver),
    Serve's status, the free resources and the metrics; with `window_s`, latency over the
    last `window_s` seconds (two scrapes) rather than since the replicas started."""
    import time

    from . import admin
    from . import connect as connect_app
    from .observe import delta, parse, pipeline_latency, scrape, stage_figures

    plan = connect_app(application, timeout_s=30).plan
    before = parse(scrape(), application=application) if window_s > 0 else None
    if before is not None:
        time.sleep(window_s)  # the window measured, not a poll
    samples = parse(scrape(), application=application)
    figures = stage_figures(samples, application)
    if before is not None:
        for stage, recent in stage_figures(delta(samples, before), application).items():
            if recent.calls and stage in figures:
                figures[stage].buckets = recent.buckets
    states = deployment_states(admin.applications().get(application))
    stages = [stage for stage in plan.deployments if stage.role == "stage"]
    for stage in stages:  # a stage fused into the driver runs in the driver's replicas
        if stage.fused_into is not None and plan.driver.name in states:
            states[stage.name] = states[plan.driver.name]
    report = diagnose(application, figures, states, stages, admin.free_resources(),
                      profile, thresholds)
    report.pipelines = {name: {"p50_ms": bucket_quantile(buckets, 0.5),
                               "p99_ms": bucket_quantile(buckets, 0.99)}
                        for name, buckets in pipeline_latency(samples, application).items()}
    return report


def deployment_states(app: Any) -> dict[str, DeploymentState]:
    """Serve's `ApplicationStatusOverview` as plain `DeploymentState`s by deployment."""
    if app is None:
        return {}
    return {name: DeploymentState(state.status.value, state.message or "",
                                  {str(getattr(k, "value", k)): int(v)
                                   for k, v in state.replica_states.items()})
            for name, state in app.deployments.items()}

"""The data of capacity planning: what `sg.profile` measured, the load to plan for, and what
the capacity pass predicts (kept in the plan).

Pure pydantic models, no measuring: they live in the compiler because the capacity pass reads
them and the compiler may not import `serving/`, where `sg.profile` measures them
(`serving.profile`). A profile round-trips through JSON, so `servegraph profile` can write one
on one machine and `servegraph compile --profile` read it on another.

Threads follow the plan: a replica's intra-op threads come from the CPUs it reserves. On Ray
those are the CPUs Ray assigned the actor; the profiler, which builds stages in-process, says
how many a stage has by setting `REPLICA_CPUS_ENV` while it builds and times the stage, and
the model helpers (`pipelines.models.replica_cpus`) read it before asking Ray.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

REPLICA_CPUS_ENV = "SERVEGRAPH_REPLICA_CPUS"


class BatchTiming(BaseModel):
    """Service time of one call at one batch size: the median over `samples` calls."""

    model_config = ConfigDict(frozen=True)

    batch_size: int
    median_ms: float
    per_item_ms: float
    samples: int


class ThreadTiming(BaseModel):
    """Service time of one call of `batch_size` items on a replica of `threads` CPUs."""

    model_config = ConfigDict(frozen=True)

    threads: int
    batch_size: int
    median_ms: float
    samples: int


class StageProfile(BaseModel):
    """One method of one stage (`method` None: a function stage). `calls`: how many recorded
    calls were replayed; `service_ms` (on one CPU) is empty when no payload called it (an arm
    not taken); `threads_ms` times its largest batch on 1, 2, ... CPUs. A map's elements are
    calls too; `maps` and `map_calls` say how many came from maps (their widths)."""

    model_config = ConfigDict(frozen=True)

    stage: str
    method: str | None
    calls: int
    service_ms: list[BatchTiming]
    peak_memory_bytes: int
    gpu_memory_bytes: int | None = None  # GPU memory the stage holds (None: no GPU measured)
    threads_ms: list[ThreadTiming] = []
    maps: int = 0       # sg.map calls over this method (each one call node's fan-out) ...
    map_calls: int = 0  # ... and the elements they mapped over, all counted in `calls`

    @property
    def label(self) -> str:
        return self.stage if self.method is None else f"{self.stage}.{self.method}"

    def summary(self) -> str:
        """One line: `Scorer.score: 4 calls; batch 1 0.012 ms, 8 0.003 ms/item; peak 1.2 KiB`
        (and, when threads were swept, `; threads 1 0.5 ms, 2 0.3 ms`)."""
        if not self.service_ms:
            return f"{self.label}: not called by any payload"
        times = ", ".join(f"{t.batch_size} {t.per_item_ms:.3g} ms/item" if t.batch_size > 1
                          else f"{t.batch_size} {t.median_ms:.3g} ms" for t in self.service_ms)
        threads = ", ".join(f"{t.threads} {t.median_ms:.3g} ms" for t in self.threads_ms)
        gpu = "" if self.gpu_memory_bytes is None else \
            f"; GPU {self.gpu_memory_bytes / 2**20:.0f} MiB"
        return (f"{self.label}: {self.calls} call{'s' if self.calls != 1 else ''}; batch "
                f"{times}; peak {self.peak_memory_bytes / 1024:.1f} KiB{gpu}"
                + (f"; threads {threads}" if len(self.threads_ms) > 1 else ""))


class Machine(BaseModel):
    """Where the profile was measured. `memory_bytes` from /proc/meminfo (None elsewhere);
    `gpus` the NVIDIA GPUs `nvidia-smi` lists (limited by CUDA_VISIBLE_DEVICES when set),
    `gpu_memory_bytes` the first one's memory."""

    model_config = ConfigDict(frozen=True)

    cpus: int
    platform: str
    python: str
    memory_bytes: int | None = None
    gpus: int = 0
    gpu_memory_bytes: int | None = None


class Profile(BaseModel):
    """What `sg.profile` measured: a `StageProfile` per called method, in schedule order."""

    model_config = ConfigDict(frozen=True)

    pipeline: str
    machine: Machine
    payloads: int
    budget_s: float
    stages: list[StageProfile]

    def stage(self, label: str) -> StageProfile:
        """The profile of `Stage.method` (or a function stage's name)."""
        for stage in self.stages:
            if stage.label == label:
                return stage
        raise KeyError(f"no stage {label!r}; profiled: "
                       f"{', '.join(s.label for s in self.stages)}")

    def methods_of(self, stage: str) -> list[StageProfile]:
        """The profiled methods of one deployment that some payload called."""
        return [each for each in self.stages if each.stage == stage and each.service_ms]


class Target(BaseModel):
    """The load to plan for: `rps` requests a second, each within `p99_ms` at the 99th
    percentile when given. `sg.compile(graph, cluster=..., profile=p, target=sg.Target(...))`;
    no target with a profile plans the most throughput the cluster allows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rps: float = Field(gt=0)
    p99_ms: float | None = Field(default=None, gt=0)

    def describe(self) -> str:
        within = "" if self.p99_ms is None else f", p99 <= {self.p99_ms:g} ms"
        return f"{self.rps:g} req/s{within}"


class StagePrediction(BaseModel):
    """What the capacity pass predicts for one deployment (or the driver) at the plan's load:
    how many replicas of how many CPUs, the batch it expects, what they serve together
    (`throughput_rps`, requests of the pipeline a second), how busy they run at `at_rps`,
    and a request's 99th-percentile time in it, queueing included."""

    model_config = ConfigDict(frozen=True)

    stage: str
    replicas: int
    cpus: float
    batch_size: int = 1
    throughput_rps: float
    utilisation: float
    p99_ms: float
    planned: bool = True  # False: left as declared (light, or not profiled)
    in_driver: bool = False  # runs in the driver's replicas (fused)
    gpu_memory_bytes: int | None = None  # measured on the GPU (its share holds it)


class CapacityPlan(BaseModel):
    """The capacity pass's predictions (`passes.capacity`): the load planned for (`target`,
    None: the most throughput), the CPUs planned on, the pipeline's predicted throughput
    (`capacity_rps`: the most it serves) and p99 at `at_rps`, and the bottleneck."""

    model_config = ConfigDict(frozen=True)

    target: Target | None = None
    cpus: float
    capacity_rps: float
    at_rps: float
    p99_ms: float
    bottleneck: str
    cpu_bound_rps: float  # what the CPUs allow, Serve's own work per call included
    stages: list[StagePrediction]
    layout: str = ""  # why stages were planned into the driver (empty: none were)

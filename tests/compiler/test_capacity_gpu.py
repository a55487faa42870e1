"""GPU memory in capacity planning: a GPU stage's share of a GPU is raised to hold what its
profile measured on the GPU (with 20% headroom), never lowered; a need no share can hold is
a `CapacityError` naming the stage. And the profiler's own measurement, with the GPU's
reporting isolated on purpose (this machine has no GPU): nvidia-smi's figure for this
process, and the growth across building a stage and running it."""

from __future__ import annotations

import inspect
import os
import stat
from pathlib import Path

import pytest

import servegraph as sg
from servegraph.compiler.profile import BatchTiming, Machine, StageProfile, ThreadTiming
from servegraph.serving import cluster as cluster_info
from servegraph.serving import profile as profiler

GIB = 2**30


pytestmark = pytest.mark.usefixtures("serve_costs")  # conftest: Serve's costs pinned
MACHINE = Machine(cpus=2, platform="test", python="3", gpus=1, gpu_memory_bytes=24 * GIB)


@sg.deployment(ray_actor_options={"num_gpus": 0.5, "num_cpus": 1})
class HalfGpu:
    def __call__(self, x: int) -> int:
        return x


@sg.deployment(ray_actor_options={"num_gpus": 1, "num_cpus": 1})
class WholeGpu:
    def __call__(self, x: int) -> int:
        return x


@sg.deployment(gpu_memory="10GiB", ray_actor_options={"num_cpus": 1})
class TenGib:
    def __call__(self, x: int) -> int:
        return x


def _graph(stage: type) -> sg.Graph:
    with sg.InputNode() as inp:
        out = stage.bind().__call__.bind(inp)
    return sg.Graph(out, name="gpu")


def _profile(stage: str, gpu_gib: float | None) -> sg.Profile:
    """20 ms a call (50 req/s a replica), `gpu_gib` of GPU memory measured."""
    measured = StageProfile(
        stage=stage, method="__call__", calls=4, peak_memory_bytes=0,
        gpu_memory_bytes=None if gpu_gib is None else int(gpu_gib * GIB),
        service_ms=[BatchTiming(batch_size=1, median_ms=20.0, per_item_ms=20.0, samples=5)],
        threads_ms=[ThreadTiming(threads=1, batch_size=1, median_ms=20.0, samples=5)])
    return sg.Profile(pipeline="gpu", machine=MACHINE, payloads=4, budget_s=1.0,
                      stages=[measured])


def _compile(stage: type, gpu_gib: float | None, gpus: int = 2, rps: float = 80
             ) -> sg.CompiledPipeline:
    return sg.compile(_graph(stage), cluster=sg.ClusterSpec(gpus=gpus, gpu_memory="24GiB",
                                                             cpus=8),
                      profile=_profile(stage.__name__, gpu_gib), target=sg.Target(rps=rps))


def test_a_fraction_too_small_for_the_measured_memory_is_raised() -> None:
    """15 GiB measured, 18 GiB with headroom: half of a 24 GiB GPU (12) does not hold it,
    0.75 does; 80 req/s needs 2 replicas, 1.5 GPUs: one replica on each of 2 GPUs."""
    plan = _compile(HalfGpu, 15)
    stage = plan.stage("HalfGpu")
    assert stage.resources.gpus == 0.75 and stage.resources.replicas.start == 2
    assert stage.options["ray_actor_options"]["num_gpus"] == 0.75
    assert plan.gpu_layout is not None and plan.gpu_layout.sharing() == [
        ["HalfGpu"], ["HalfGpu"]]
    assert plan.capacity is not None and plan.capacity.stages[0].gpu_memory_bytes == 15 * GIB
    assert "GPU memory measured 15GiB, 0.75 GPU a replica" in plan.explain()
    # on one GPU the raised share leaves room for one replica: the target is out of reach
    with pytest.raises(sg.CapacityError, match="needs 2 GPUs and the cluster has 1"):
        _compile(HalfGpu, 15, gpus=1)


def test_a_share_that_holds_the_measured_memory_stays() -> None:
    plan = _compile(HalfGpu, 5)
    assert plan.stage("HalfGpu").resources.gpus == 0.5
    assert plan.gpu_layout is not None and plan.gpu_layout.sharing() == [
        ["HalfGpu", "HalfGpu"]]
    assert "GPU memory measured 5GiB, 0.5 GPU a replica" in plan.explain()
    # nothing measured (a profile taken without a GPU): as declared, nothing said
    plan = _compile(HalfGpu, None)
    assert plan.stage("HalfGpu").resources.gpus == 0.5
    assert "GPU memory measured" not in plan.explain()


def test_a_gpu_memory_stage_gets_the_memory_measured() -> None:
    """gpu_memory=10GiB declared, 10 GiB measured: 12 GiB planned, half of a 24 GiB GPU."""
    plan = _compile(TenGib, 10)
    facts = plan.stage("TenGib").resources
    assert (facts.gpu_memory, facts.gpus, facts.gpus_from_memory) == (12 * GIB, 0.5, True)
    assert _compile(TenGib, 8).stage("TenGib").resources.gpu_memory == 10 * GIB


def _site(stage: type) -> str:
    """Where `stage` was declared, as an error names it: its decorator's line."""
    lines, first = inspect.getsourcelines(stage)
    return f"tests/compiler/test_capacity_gpu.py:{first}: {lines[0].strip()}"


@pytest.mark.parametrize(("stage", "message"), [
    (HalfGpu, "more than one GPU holds (24GiB, the smallest in the cluster spec)\n  hint: give "
     "the stage whole GPUs (ray_actor_options={'num_gpus': 2}) for a model split over "
     "several, or a cluster with larger GPUs"),
    (WholeGpu, "more than its 1 GPU of 24GiB holds (num_gpus=1)\n  hint: raise num_gpus to "
     "2, or use a cluster with larger GPUs"),
])
def test_memory_no_share_holds_is_a_capacity_error(stage: type, message: str) -> None:
    with pytest.raises(sg.CapacityError) as caught:
        _compile(stage, 21)
    assert str(caught.value) == (
        f"[capacity] stage '{stage.__name__}' ({_site(stage)}): the profile measured 21GiB of "
        f"GPU memory in a replica; with 20% headroom that is 25.2GiB, {message}")
    assert _compile(WholeGpu, 19).stage("WholeGpu").resources.gpus == 1.0


def test_a_profile_keeps_the_gpu_memory_through_json() -> None:
    profile = _profile("HalfGpu", 1.5)
    again = sg.Profile.model_validate_json(profile.model_dump_json())
    assert again == profile and again.stages[0].gpu_memory_bytes == int(1.5 * GIB)
    assert again.stages[0].summary().endswith("; GPU 1536 MiB")


def test_nvidia_smis_figure_for_this_process(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`gpu_memory_in_use` sums nvidia-smi's used memory (MiB) of this process's rows only
    (a stand-in `nvidia-smi` on PATH answers as the real one's CSV does)."""
    tool = tmp_path / "nvidia-smi"
    tool.write_text("#!/bin/sh\n"
                    f"printf '{os.getpid()}, 2048\\n999999999, 7000\\n{os.getpid()}, 512\\n'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert cluster_info.gpu_memory_in_use() == (2048 + 512) * 2**20
    tool.write_text("#!/bin/sh\nprintf '999999999, 7000\\n'\n")
    assert cluster_info.gpu_memory_in_use() is None  # not this process's (torch not on a GPU)


def test_the_profiler_records_what_building_and_running_a_stage_took(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine with a GPU the profile records, per stage, how much this process's GPU
    memory grew from before the stage was built to after its first (largest) call."""
    readings = iter([1 * GIB, 3 * GIB])
    monkeypatch.setattr(profiler, "gpu_memory_in_use", lambda: next(readings))
    monkeypatch.setattr(profiler, "describe_machine", lambda cpus=None: Machine(
        cpus=1, platform="test", python="3", gpus=1, gpu_memory_bytes=24 * GIB))
    plan = sg.compile(_graph(HalfGpu))
    profile = sg.profile(plan, [1, 2], budget_s=0.2)
    assert [each.gpu_memory_bytes for each in profile.stages] == [2 * GIB]

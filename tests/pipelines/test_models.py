"""Model-stage building blocks: provider, device and thread choices as pure functions of the
environment and the options, the model cache, and the two runners on tiny models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servegraph.pipelines import models


@pytest.mark.parametrize(("value", "expected"), [
    (None, []), ("", []), ("-1", []), ("NoDevFiles", []), (" ", []),
    ("0", ["0"]), ("2,3", ["2", "3"]), ("GPU-5c1b,GPU-77aa", ["GPU-5c1b", "GPU-77aa"]),
    ("1, ", ["1"]),
])
def test_assigned_gpus_reads_cuda_visible_devices(value: str | None,
                                                  expected: list[str]) -> None:
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert models.assigned_gpus(env) == expected


CPU = ["CPUExecutionProvider"]
CUDA_AND_CPU = ["CUDAExecutionProvider", "CPUExecutionProvider"]
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(("env", "available", "expected"), [
    ({"CUDA_VISIBLE_DEVICES": "0"}, GPU_BUILD, CUDA_AND_CPU),  # a GPU, onnxruntime-gpu
    ({"CUDA_VISIBLE_DEVICES": "0"}, CPU, CPU),                  # a GPU, CPU-only onnxruntime
    ({"CUDA_VISIBLE_DEVICES": ""}, GPU_BUILD, CPU),            # Ray gave this replica none
    ({}, GPU_BUILD, CPU),                                       # nothing assigned
    ({}, CPU, CPU),
])
def test_onnx_providers(env: dict[str, str], available: list[str],
                        expected: list[str]) -> None:
    assert models.onnx_providers(env, available) == expected


@pytest.mark.parametrize(("env", "cuda_available", "expected"), [
    ({"CUDA_VISIBLE_DEVICES": "1"}, True, "cuda"),
    ({"CUDA_VISIBLE_DEVICES": "1"}, False, "cpu"),  # a logical GPU of a test cluster
    ({"CUDA_VISIBLE_DEVICES": "-1"}, True, "cpu"),
    ({}, True, "cpu"),
])
def test_torch_device(env: dict[str, str], cuda_available: bool, expected: str) -> None:
    assert models.torch_device(env, cuda_available) == expected


@pytest.mark.parametrize(("requested", "assigned", "machine", "expected"), [
    (3, 1.0, 16, 3),        # asked for: wins
    (None, 1.0, 16, 1),     # Ray's reservation
    (None, 2.0, 16, 2),
    (None, 1.5, 16, 1),     # whole CPUs only
    (None, 0.5, 16, 1),     # half a CPU still runs a thread
    (None, 0.0, 16, 1),
    (None, None, 16, 16),   # no Ray: the machine
    (None, None, None, os.cpu_count() or 1),
])
def test_thread_count(requested: int | None, assigned: float | None, machine: int | None,
                      expected: int) -> None:
    assert models.thread_count(requested, assigned, machine) == expected


def test_thread_count_refuses_zero() -> None:
    with pytest.raises(ValueError, match="threads=0: need at least one"):
        models.thread_count(0)


def test_outside_ray_nothing_is_assigned() -> None:
    assert models.ray_assigned_cpus() is None


def test_cache_dir_from_the_environment() -> None:
    assert models.cache_dir({"SERVEGRAPH_CACHE": "/srv/models"}) == Path("/srv/models")
    assert models.cache_dir({}) == Path.home() / ".cache" / "servegraph"
    assert models.cache_dir({"SERVEGRAPH_CACHE": ""}) == Path.home() / ".cache" / "servegraph"


def test_fingerprint_is_stable_and_tells_recipes_apart() -> None:
    assert models.fingerprint(1, "adam", 0.01) == models.fingerprint(1, "adam", 0.01)
    assert models.fingerprint(1, "adam", 0.01) != models.fingerprint(2, "adam", 0.01)
    assert len(models.fingerprint()) == 12


def test_cached_builds_once_and_renames_into_place(tmp_path: Path) -> None:
    built: list[Path] = []

    def build(path: Path) -> None:
        built.append(path)
        assert path.parent == tmp_path / "sub" and path.suffix == ".onnx"
        assert not (tmp_path / "sub" / "model.onnx").exists()  # not visible until whole
        path.write_bytes(b"weights")

    first = models.cached("sub/model.onnx", build, root=tmp_path)
    second = models.cached("sub/model.onnx", build, root=tmp_path)
    assert first == second == tmp_path / "sub" / "model.onnx"
    assert first.read_bytes() == b"weights"
    assert len(built) == 1
    assert sorted(p.name for p in first.parent.iterdir()) == ["model.onnx"]
    assert first.stat().st_mode & 0o777 == 0o644


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def build(path: Path) -> None:
        path.write_bytes(b"half a fi")
        raise RuntimeError("out of disk")

    with pytest.raises(RuntimeError, match="out of disk"):
        models.cached("model.pt", build, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cached_uses_the_environment_default(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEGRAPH_CACHE", str(tmp_path))
    path = models.cached("x.bin", lambda p: p.write_bytes(b"x"))
    assert path == tmp_path / "x.bin"


def _add_one_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "add_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_onnx_model_runs_on_the_cpu_when_the_gpu_is_only_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    path = models.cached("add_one.onnx", _add_one_model, root=tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    model = models.OnnxModel(path, threads=1)
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        assert model.providers == ["CPUExecutionProvider"]
    assert model.threads == 1
    assert model.input_names == ["x"] and model.output_names == ["y"]
    (out,) = model.run({"x": np.array([1.0, 2.5], dtype=np.float32)})
    assert out.tolist() == [2.0, 3.5]
    assert "threads=1" in repr(model)


def test_torch_model_infers_without_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")

    class Probe(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            assert torch.is_inference_mode_enabled()
            return x * 2

    threads = torch.get_num_threads()
    model = models.TorchModel(Probe())
    assert torch.get_num_threads() == threads  # no Ray, no threads asked for: left alone
    if not torch.cuda.is_available():
        assert model.device == torch.device("cpu")
    out = model(np.array([[1, 2]], dtype=np.int64))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.tolist() == [[2.0, 4.0]]
    assert not model.module.training


@pytest.mark.ray
def test_a_ray_replica_reads_its_cpus_from_ray(ray_serve: int) -> None:
    import ray

    @ray.remote
    class Replica:
        def threads(self) -> tuple[float | None, int]:
            assigned = models.ray_assigned_cpus()
            return assigned, models.thread_count(None, assigned)

    sizes = [2, 1, 0.5]
    replicas = [Replica.options(num_cpus=cpus).remote() for cpus in sizes]  # type: ignore[attr-defined]
    try:
        answers = ray.get([replica.threads.remote() for replica in replicas])
    finally:
        for replica in replicas:
            ray.kill(replica)
    assert answers == [(2.0, 2), (1.0, 1), (0.5, 1)]

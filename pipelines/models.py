"""Building blocks for model stages: ONNX Runtime sessions and PyTorch modules sized to what
Ray assigned the replica, and a cache where the project produces its model files.

A replica learns its share of the machine from Ray: `CUDA_VISIBLE_DEVICES` names the GPUs it
was given (Ray sets it per actor), and the runtime context holds the CPUs it reserved. The
choices made from them are pure functions of the environment and the options
(`onnx_providers`, `torch_device`, `thread_count`), tested on literal inputs; `OnnxModel` and
`TorchModel` apply them. Ray is never imported here: it is consulted only when the process
already runs inside it, so the local executor (no Ray) and unit tests stay Ray-free.

A GPU being *named* is not enough: a test cluster declares logical GPUs that do not exist (a
fractional-GPU stage then schedules on a laptop), so CUDA is used only when the runtime can
reach it too (onnxruntime-gpu's provider, `torch.cuda.is_available()`); otherwise the CPU.

Model files are never downloaded. `cached()` builds one at first use (exported from PyTorch,
converted from scikit-learn, trained) into `$SERVEGRAPH_CACHE` (default
`~/.cache/servegraph`): written to a temporary file beside the target and renamed over it,
so a reader never sees half a file and two replicas building at once both leave a whole one.
Names carry a `fingerprint` of what the file is built from, so a changed recipe builds anew.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnxruntime
    import torch

CACHE_ENV = "SERVEGRAPH_CACHE"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# What CUDA_VISIBLE_DEVICES holds when a process is meant to see no GPU at all.
NO_GPU_VALUES = frozenset({"", "-1", "none", "nodevfiles", "void"})


# --- the model cache -------------------------------------------------------------------------


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where built models live: `$SERVEGRAPH_CACHE`, else `~/.cache/servegraph`."""
    env = os.environ if env is None else env
    configured = env.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "servegraph"


def fingerprint(*parts: object) -> str:
    """A short stable digest of what a model file is built from (recipe version, data,
    hyper-parameters, library versions): part of the file's name in the cache."""
    digest = hashlib.sha256("\x1f".join(map(repr, parts)).encode())
    return digest.hexdigest()[:12]


def cached(name: str, build: Callable[[Path], None], *, root: Path | None = None) -> Path:
    """The path of `name` in the cache, calling `build(temporary_path)` first when it is
    missing. `build` writes the whole file to the path it is given (same directory, same
    suffix); it is renamed into place only once `build` returns, and removed if it raises."""
    target = (root or cache_dir()) / name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.",
                                         suffix=target.suffix)
    os.close(handle)
    try:
        build(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from other accounts
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


# --- what the replica was given: pure functions ----------------------------------------------


def assigned_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPU ids in `CUDA_VISIBLE_DEVICES` (unset, empty or `-1`: none)."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None or value.strip().lower() in NO_GPU_VALUES:
        return []
    return [part.strip() for part in value.split(",") if part.strip()]


def onnx_providers(env: Mapping[str, str], available: Sequence[str]) -> list[str]:
    """ONNX Runtime execution providers, best first: CUDA when a GPU is assigned and the CUDA
    provider is installed (onnxruntime-gpu), and the CPU always, as the fallback."""
    if assigned_gpus(env) and CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def torch_device(env: Mapping[str, str], cuda_available: bool) -> str:
    """`"cuda"` when a GPU is assigned and torch can reach one, else `"cpu"`. Ray narrows
    `CUDA_VISIBLE_DEVICES` to the replica's GPU, so it is always `cuda:0` from inside."""
    return "cuda" if assigned_gpus(env) and cuda_available else "cpu"


def thread_count(requested: int | None = None, assigned_cpus: float | None = None,
                 machine_cpus: int | None = None) -> int:
    """Intra-op threads: the number asked for; else the whole CPUs Ray reserved for the
    replica (at least one: half a CPU still runs one thread, and more threads than reserved
    CPUs would steal from the neighbours); else every CPU of the machine (no Ray: the
    process owns it)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"threads={requested}: need at least one")
        return requested
    if assigned_cpus is not None:
        return max(1, math.floor(assigned_cpus + 1e-9))
    return max(1, machine_cpus or os.cpu_count() or 1)


def replica_cpus() -> float | None:
    """The CPUs this replica was planned: what `sg.profile` says while it builds and times a
    stage in-process (`REPLICA_CPUS_ENV`), else what Ray reserved for this actor, else None
    (a local run, a test: the process owns the machine)."""
    from servegraph.compiler.profile import REPLICA_CPUS_ENV

    planned = os.environ.get(REPLICA_CPUS_ENV)
    if planned:
        return float(planned)
    return ray_assigned_cpus()


def ray_assigned_cpus() -> float | None:
    """The CPUs Ray reserved for this actor, or None outside a Ray actor (the local executor,
    a test, Ray's driver). Looks Ray up only if this process has already imported it."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:
        return None
    return float(context.get_assigned_resources().get("CPU", 0.0))


# --- ONNX Runtime ------------------------------------------------------------------------


def session_options(threads: int) -> onnxruntime.SessionOptions:
    """One intra-op pool of `threads`, operators run in order, and no spinning between runs:
    a spinning pool burns the CPU that the replica's neighbours (or, locally, the other stages
    of the same process) need while it waits for the next batch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class OnnxModel:
    """An ONNX Runtime session on the providers and threads this replica was given.

    `threads` overrides the choice; `run` takes numpy inputs by name and returns the outputs
    as numpy arrays. Safe to call from worker threads (ONNX Runtime releases the GIL)."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.providers = onnx_providers(os.environ, ort.get_available_providers())
        self.threads = thread_count(threads, replica_cpus())
        self.session = ort.InferenceSession(str(self.path), session_options(self.threads),
                                            providers=self.providers)
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.output_names = [node.name for node in self.session.get_outputs()]

    def run(self, inputs: Mapping[str, np.ndarray],
            outputs: Sequence[str] | None = None) -> list[Any]:
        return self.session.run(list(outputs) if outputs else None, dict(inputs))

    def __repr__(self) -> str:
        return (f"OnnxModel({self.path.name!r}, providers={self.providers}, "
                f"threads={self.threads})")


# --- PyTorch ---------------------------------------------------------------------------------


class TorchModel:
    """A torch module in eval mode on the assigned device, called under `inference_mode`.

    Torch's thread pool belongs to the process, so it is sized only in a Ray replica (or when
    `threads` is given), never behind the back of a local run that hosts other stages."""

    def __init__(self, module: torch.nn.Module, *, device: str | None = None,
                 threads: int | None = None) -> None:
        import torch

        self.device = torch.device(device or torch_device(os.environ, torch.cuda.is_available()))
        assigned = replica_cpus()
        if threads is not None or assigned is not None:
            torch.set_num_threads(thread_count(threads, assigned))
        self.module = module.to(self.device).eval()

    def __call__(self, *inputs: Any) -> np.ndarray:
        """Inputs as numpy arrays or tensors (moved to the device); the first output as a
        float32 numpy array on the CPU."""
        import torch

        with torch.inference_mode():
            tensors = [torch.as_tensor(value).to(self.device) for value in inputs]
            output = self.module(*tensors)
            return output.float().cpu().numpy()

    def __repr__(self) -> str:
        return f"TorchModel({type(self.module).__name__}, device={self.device})"

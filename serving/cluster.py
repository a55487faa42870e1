"""Read a `ClusterSpec` off a running Ray cluster: its alive nodes, their CPUs and GPUs.

Ray counts GPUs but does not know their memory. It is read from PyTorch or `nvidia-smi` on
this machine when it has a GPU; otherwise `gpu_memory` must be given, and a stage that asks
for `gpu_memory` fails to compile with a message saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

from ..compiler.cluster import ClusterSpec, NodeSpec


def detect_cluster(address: str | None = None, *, gpu_memory: str | int | None = None
                   ) -> ClusterSpec:
    """The cluster Ray is connected to (connecting to `address`, or `RAY_ADDRESS`/`auto`,
    when this process is not yet)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or "auto", configure_logging=False)
    memory = gpu_memory if gpu_memory is not None else local_gpu_memory()
    nodes = []
    for node in sorted(ray.nodes(), key=_head_first):
        if not node.get("Alive"):
            continue
        resources: dict[str, float] = node.get("Resources", {})
        gpus = int(resources.get("GPU", 0))
        node_id = node["NodeID"]
        nodes.append(NodeSpec(
            name=f"{node.get('NodeManagerAddress', 'node')}-{node_id[:6]}", gpus=gpus,
            gpu_memory=memory if gpus else None, cpus=resources.get("CPU", 0.0),
            labels={"ray.io/node-id": node_id},
        ))
    return ClusterSpec(nodes=nodes)


def _head_first(node: dict[str, Any]) -> tuple[int, str]:
    return (0 if node.get("Resources", {}).get("node:__internal_head__") else 1,
            node.get("NodeID", ""))


def local_gpu_memory() -> int | None:
    """The memory of this machine's first GPU in bytes, or None without one."""
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory)
    except Exception:
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True).stdout
            return int(float(out.split()[0]) * 2**20)
        except (subprocess.SubprocessError, ValueError, IndexError, OSError):
            return None
    return None


def gpu_memory_in_use() -> int | None:
    """GPU memory this process holds, in bytes, on all its GPUs: what NVIDIA's driver reports
    for its PID (`nvidia-smi --query-compute-apps`: torch's cache, ONNX Runtime's arena and
    the CUDA context alike), else, where a container hides its PIDs from nvidia-smi, the most
    torch's CUDA allocator has reserved since its peak was last reset; None without a GPU
    (or when neither can tell)."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory",
                 "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True).stdout
            mine = [float(used) for pid, used in
                    (line.split(",")[:2] for line in out.splitlines() if "," in line)
                    if pid.strip() == str(os.getpid())]
            if mine:
                return int(sum(mine) * 2**20)
        except (subprocess.SubprocessError, ValueError, OSError):
            pass
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            return sum(int(torch.cuda.max_memory_reserved(device))
                       for device in range(torch.cuda.device_count()))
    except Exception:
        return None
    return None


def reset_gpu_peak() -> None:
    """Start torch's peak of reserved CUDA memory afresh (what `gpu_memory_in_use` reads
    where nvidia-smi cannot see this process); nothing without torch on a GPU."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            for device in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(device)
    except Exception:
        return

"""Stages for the multi-node check (tests/multinode_check.py), importable so Ray workers on
every node load them. Each GPU replica records what Ray gave it in its constructor: its node,
`CUDA_VISIBLE_DEVICES` and `ray.get_gpu_ids()`, one JSON file per replica in `views`.

Two pipelines for a cluster of 3 GPUs of 24 GiB (a node with 2, a node with 1), each placed
by Serve's pack scheduling (`RAY_SERVE_USE_PACK_SCHEDULING_STRATEGY=1`, as servegraph runs
Serve) exactly as the pack pass planned, node by node and GPU by GPU:

- `placement_graph`: Generators (0.67 GPU, from 16 GiB), Embedders (0.5, from 12 GiB) and
  Rerankers (0.25, declared) around a CPU stage;
- `pairs_graph`: six half-GPU replicas of three stages, a layout nothing forces: the plan pairs
  each stage with itself. (Under Serve's default SPREAD scheduling Ray alternates nodes replica
  by replica and pairs Alpha with Beta instead; the pack setting is what makes it land.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import servegraph as sg


def record_view(views: str, stage: str) -> None:
    """Write this replica's view of its placement to `views/<stage>-<pid>.json`."""
    import ray

    view = {"stage": stage, "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()]}
    path = Path(views) / f"{stage}-{os.getpid()}.json"
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(view))
    partial.rename(path)  # readers never see half a file


@sg.deployment
def tokenize(text: str) -> list[str]:
    return text.split()


@sg.deployment(num_replicas=2, gpu_memory="16GiB")
class Generator:
    """16 GiB of a 24 GiB GPU: 0.67 of a GPU, so no two share one."""

    def __init__(self, views: str) -> None:
        record_view(views, "Generator")

    def generate(self, ranked: list[str]) -> str:
        return " > ".join(ranked)


@sg.deployment(num_replicas=2, gpu_memory="12GiB")
class Embedder:
    """12 GiB: half a GPU, too much to join a Generator (a third of a GPU left there)."""

    def __init__(self, views: str) -> None:
        record_view(views, "Embedder")

    def embed(self, tokens: list[str]) -> list[float]:
        return [float(len(token)) for token in tokens]


@sg.deployment(num_replicas=2, ray_actor_options={"num_gpus": 0.25})
class Reranker:
    """A declared quarter of a GPU: fits beside a Generator, not beside two Embedders."""

    def __init__(self, views: str) -> None:
        record_view(views, "Reranker")

    def rerank(self, scores: list[float], tokens: list[str]) -> list[str]:
        order = sorted(range(len(tokens)), key=lambda i: (-scores[i], i))
        return [tokens[i] for i in order]


def placement_graph(views: str) -> sg.Graph:
    """tokenize -> Embedder -> Reranker (reads the tokens too) -> Generator: the words
    longest first, joined by ' > '."""
    with sg.InputNode() as inp:
        tokens = tokenize.bind(inp.text)
        scores = Embedder.bind(views).embed.bind(tokens)
        ranked = Reranker.bind(views).rerank.bind(scores, tokens)
        answer = Generator.bind(views).generate.bind(ranked)
    return sg.Graph(answer, name="placement")


@sg.deployment(num_replicas=2, ray_actor_options={"num_gpus": 0.5})
class Alpha:
    def __init__(self, views: str) -> None:
        record_view(views, "Alpha")

    def __call__(self, x: int) -> int:
        return x + 1


@sg.deployment(num_replicas=2, ray_actor_options={"num_gpus": 0.5})
class Beta:
    def __init__(self, views: str) -> None:
        record_view(views, "Beta")

    def __call__(self, x: int) -> int:
        return x + 1


@sg.deployment(num_replicas=2, ray_actor_options={"num_gpus": 0.5})
class Gamma:
    def __init__(self, views: str) -> None:
        record_view(views, "Gamma")

    def __call__(self, x: int) -> int:
        return x + 1


def pairs_graph(views: str) -> sg.Graph:
    """Alpha -> Beta -> Gamma, each adds 1: two half-GPU replicas per stage. The plan puts
    each stage's two replicas on one GPU, but any pairing fits."""
    with sg.InputNode() as inp:
        value = inp.x
        for stage in (Alpha, Beta, Gamma):
            value = stage.bind(views).__call__.bind(value)
    return sg.Graph(value, name="pairs")

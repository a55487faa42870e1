"""Stages for the gallery of bad pipelines (module-level so their declaration lines are fixed)."""

from __future__ import annotations

import servegraph as sg


@sg.deployment
def produce(text: str) -> str:
    return text.upper()


@sg.deployment
def consume(count: int) -> int:
    return count + 1


@sg.deployment
def lengths(texts: list[str]) -> list[int]:
    return [len(t) for t in texts]


@sg.deployment
class Encoder:
    def __init__(self, dim: int = 2) -> None:
        self.dim = dim

    def encode(self, text: str) -> list[float]:
        return [float(len(text))] * self.dim

    def sync_batch(self, texts: list[str]) -> list[int]:
        return [len(t) for t in texts]


@sg.deployment(autoscaling_config={"min_replicas": 3, "max_replicas": 1})
class Inverted:
    def __call__(self, x: int) -> int:
        return x


@sg.deployment(ray_actor_options={"num_gpus": 1.5})
class TooManyGpus:
    def __call__(self, x: int) -> int:
        return x


@sg.deployment(num_replica=2)
def typo(x: int) -> int:
    return x


@sg.deployment(num_replicas=0)
def no_replicas(x: int) -> int:
    return x


@sg.deployment(num_replicas=2, autoscaling_config={"min_replicas": 1, "max_replicas": 4})
def both_scalings(x: int) -> int:
    return x


@sg.deployment(gpu_memory="six gigs")
def bad_memory(x: int) -> int:
    return x


@sg.deployment(user_config={"threshold": 0.5})
def configured_function(x: int) -> int:
    return x


@sg.deployment(user_config={"threshold": 0.7})
class Unconfigurable:
    def __call__(self, x: int) -> int:
        return x


@sg.deployment(version="v1")
def versioned(x: int) -> int:
    return x

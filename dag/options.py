"""Deployment options: every keyword of `ray.serve.deployment`, plus servegraph's own.

Validated with pydantic by the compiler's validate pass; this module only knows shapes and
ranges, never Ray (the dag layer does not import ray). Ray's names and meanings are kept, so an
options dict moves to `serve.deployment(**options)` unchanged once servegraph's own keys
(`SERVEGRAPH_OPTIONS`: `gpu_memory`, `fuse`, `timeout_s`, `max_retries`) are dropped.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SERVEGRAPH_OPTIONS = frozenset({"gpu_memory", "fuse", "timeout_s", "max_retries"})

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | float | str) -> int:
    """`"6GiB"` -> 6442450944; plain numbers are bytes."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string such as '6GiB'")
    if isinstance(value, (int, float)):
        size = float(value)
    else:
        match = _SIZE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"cannot read {value!r} as a size; write bytes or e.g. '6GiB', '512MB'")
        size = float(match.group(1)) * _UNITS[unit]
    if size <= 0:
        raise ValueError("a size must be positive")
    return int(size)


class _Open(BaseModel):
    """Ray validates the rest of these itself; we check what servegraph relies on."""

    model_config = ConfigDict(extra="allow", frozen=True)


class ActorOptions(_Open):
    num_cpus: float | None = Field(default=None, ge=0)
    num_gpus: float | None = Field(default=None, ge=0)
    memory: float | None = Field(default=None, ge=0)
    resources: dict[str, float] | None = None

    @field_validator("num_gpus")
    @classmethod
    def _whole_above_one(cls, value: float | None) -> float | None:
        if value is not None and value > 1 and value != int(value):
            raise ValueError(
                f"num_gpus={value} is a fraction above 1: Ray places a fraction on one GPU only, "
                "so use a whole number of GPUs or a fraction <= 1"
            )
        return value


class AutoscalingOptions(_Open):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({initial}) is outside "
                f"[min_replicas={self.min_replicas}, max_replicas={self.max_replicas}]"
            )
        return self


class DeploymentOptions(BaseModel):
    """What `@sg.deployment(...)` accepts. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, min_length=1)
    version: str | None = None
    num_replicas: int | Literal["auto"] | None = None
    ray_actor_options: ActorOptions | None = None
    placement_group_bundles: list[dict[str, float]] | None = None
    placement_group_strategy: (
        Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] | None) = None
    placement_group_bundle_label_selector: list[dict[str, str]] | None = None
    max_replicas_per_node: int | None = Field(default=None, ge=1)
    user_config: Any = None
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    max_queued_requests: int | None = Field(default=None, ge=-1)
    backpressure_config: dict[str, Any] | None = None
    autoscaling_config: AutoscalingOptions | None = None
    graceful_shutdown_wait_loop_s: float | None = Field(default=None, ge=0)
    graceful_shutdown_timeout_s: float | None = Field(default=None, ge=0)
    health_check_period_s: float | None = Field(default=None, gt=0)
    health_check_timeout_s: float | None = Field(default=None, gt=0)
    logging_config: dict[str, Any] | None = None
    request_router_config: dict[str, Any] | None = None
    max_constructor_retry_count: int | None = Field(default=None, ge=1)
    gang_scheduling_config: dict[str, Any] | None = None
    deployment_actors: list[dict[str, Any]] | None = None
    rolling_update_percentage: float | None = Field(default=None, gt=0, le=100)
    max_surge_percent: int | None = Field(default=None, ge=0)
    # servegraph's own
    gpu_memory: int | None = None
    fuse: bool | None = None
    timeout_s: float | None = None   # bound on each call (a stream: on each chunk's wait)
    max_retries: int | None = None   # calls retried after a failure or timeout (idempotent)

    @field_validator("num_replicas")
    @classmethod
    def _replicas(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"num_replicas must be at least 1, got {value}")
        return value

    @field_validator("gpu_memory", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int | None:
        return None if value is None else parse_bytes(value)

    @field_validator("timeout_s", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 < value < float("inf")):
            raise ValueError("must be a positive number of seconds")
        return float(value)

    @field_validator("max_retries", mode="before")
    @classmethod
    def _retries(cls, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("must be a whole number >= 0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentOptions:
        if self.autoscaling_config is not None and isinstance(self.num_replicas, int):
            raise ValueError(
                "num_replicas and autoscaling_config together: give one "
                "(num_replicas='auto' or leave it out when autoscaling)"
            )
        return self

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for `serve.deployment(...).options(...)`: JSON-able, Ray's names."""
        return self.model_dump(exclude_none=True, exclude=set(SERVEGRAPH_OPTIONS))

"""Deployment options: every keyword of `ray.serve.deployment`, plus servegraph's own.

Validated with pydantic by the compiler's validate pass; this module only knows shapes and
ranges, never Ray (the dag layer does not import ray). Ray's names and meanings are kept, so an
options dict moves to `serve.deployment(**options)` unchanged once servegraph's own keys
(`SERVEGRAPH_OPTIONS`: `gpu_memory`, `fuse`, `timeout_s`, `max_retries`) are dropped.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

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


# Serve's `AutoscalingConfig.default()` (ray/serve/config.py): with `num_replicas="auto"` Serve
# lays the keys the user set over these (`handle_num_replicas_auto` in
# ray/serve/_private/config.py; a `serve deploy` override does the same in
# `override_deployment_info`, ray/serve/_private/application_state.py). Written out here because
# the dag layer does not import ray; tests/dag/test_dag.py pins it to Ray's own.
AUTO_AUTOSCALING_DEFAULTS: dict[str, Any] = {
    "target_ongoing_requests": 2.0, "min_replicas": 1, "max_replicas": 100}


class AutoscalingOptions(_Open):
    """Serve's `AutoscalingConfig`; the defaults are its own (a plain `autoscaling_config`
    without `num_replicas="auto"` scales 1..1 unless told otherwise). Their order is checked
    by `DeploymentOptions`, which knows whether `"auto"` changes them."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float | None = Field(default=None, gt=0)

    def under_auto(self) -> AutoscalingOptions:
        """The config Serve runs for `num_replicas="auto"`: the keys set here laid over
        `AUTO_AUTOSCALING_DEFAULTS`."""
        return AutoscalingOptions.model_validate(
            AUTO_AUTOSCALING_DEFAULTS | self.model_dump(exclude_unset=True))

    def check_order(self, auto: bool) -> None:
        """min_replicas <= initial_replicas <= max_replicas, judged on the values Serve will
        use (`auto`: under `num_replicas="auto"`); a bound the user left out says so."""
        used = self.under_auto() if auto else self
        low, high, initial = used.min_replicas, used.max_replicas, used.initial_replicas
        unset = [key for key in ("min_replicas", "max_replicas")
                 if key not in self.model_fields_set]
        note = "" if not unset else (
            f"; {' and '.join(unset)} "
            + ("is Serve's default" if len(unset) == 1 else "are Serve's defaults")
            + (" for num_replicas='auto'" if auto else ""))
        if low > high:
            raise ValueError(f"min_replicas ({low}) > max_replicas ({high}){note}")
        if initial is not None and not low <= initial <= high:
            raise ValueError(f"initial_replicas ({initial}) is outside [min_replicas={low}, "
                             f"max_replicas={high}]{note}")


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

    @field_validator("autoscaling_config")
    @classmethod
    def _bounds(cls, value: AutoscalingOptions | None,
                info: ValidationInfo) -> AutoscalingOptions | None:
        """`num_replicas` is validated first (declared above), so whether it is "auto"
        is known here."""
        if value is not None:
            value.check_order(auto=info.data.get("num_replicas") == "auto")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DeploymentOptions:
        if self.autoscaling_config is not None and isinstance(self.num_replicas, int):
            raise ValueError(
                "num_replicas and autoscaling_config together: give one "
                "(num_replicas='auto' or leave it out when autoscaling)"
            )
        return self

    def autoscaling(self) -> AutoscalingOptions | None:
        """The autoscaling config Serve runs with, its defaults filled in: for
        `num_replicas="auto"` the user's keys over `AUTO_AUTOSCALING_DEFAULTS`; None for a
        fixed number of replicas."""
        if self.num_replicas == "auto":
            return (self.autoscaling_config or AutoscalingOptions()).under_auto()
        return self.autoscaling_config

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for `serve.deployment(...).options(...)`: JSON-able, Ray's names,
        only what the user set (a None counts as unset). Our models' defaults stay out, so
        Serve applies its own: `autoscaling_config` with `num_replicas="auto"` defaults its
        `max_replicas` to 100, not to the 1 our model holds for a plain config."""
        return self.model_dump(exclude_unset=True, exclude_none=True,
                               exclude=set(SERVEGRAPH_OPTIONS))

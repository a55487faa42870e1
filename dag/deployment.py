"""`sg.deployment`, `sg.batch` and `sg.map`: how user code becomes stages of a graph.

A decorated class or function stays what it was (a test can still call `Encoder("dir")`);
servegraph only attaches a `DeploymentSpec` and the `bind`/`options` entry points to it.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ..errors import BindError, OptionsError, SourceSite
from .nodes import CallNode, CallTarget, ClassNode, MethodRef, Node, Op, find_nodes, make_call
from .site import user_site

SPEC_ATTR = "__servegraph_deployment__"
BATCH_ATTR = "__servegraph_batch__"

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class DeploymentSpec:
    """A stage definition: the user's class or function, its raw options, where it was declared.

    Options stay raw here; the compiler's validate pass checks them, so every bad option is
    reported the same way, with the stage and this declaration's line.
    """

    target: Any
    raw_options: Mapping[str, Any]
    site: SourceSite
    is_function: bool = field(default=False)

    @property
    def name(self) -> str:
        name = self.raw_options.get("name")
        return name if isinstance(name, str) and name else self.target.__name__

    def bind(self, *args: Any, **kwargs: Any) -> ClassNode | CallNode:
        if self.is_function:
            return make_call(Op.CALL, CallTarget(self, None), args, kwargs)
        site = user_site()
        if any(True for _ in find_nodes((args, kwargs))):
            raise BindError(
                "constructor arguments hold a graph node; they are fixed when the replica starts",
                stage=self.name, site=site,
                hint="pass per-request values to a method: stage.method.bind(value)",
            )
        return ClassNode(Op.CLASS, self, tuple(args), dict(kwargs), site)

    def options(self, **options: Any) -> DeploymentSpec:
        """A copy with options overridden (Ray's `Deployment.options`)."""
        return replace(self, raw_options={**self.raw_options, **options}, site=user_site())

    def __repr__(self) -> str:
        return f"<stage {self.name}>"


def deployment(_target: T | None = None, **options: Any) -> Any:
    """Declare a class or function as a stage: `@sg.deployment` or `@sg.deployment(...)`.

    Accepts every keyword of `ray.serve.deployment`, plus servegraph's own: `gpu_memory`,
    `fuse`, `timeout_s` (seconds one call may take; a streaming stage: the wait for each chunk)
    and `max_retries` (calls made again after a failure or a timeout; idempotent stages only).
    An object already decorated with `ray.serve.deployment` is accepted and keeps its options.
    """
    site = user_site()

    def decorate(target: Any) -> Any:
        inner, inherited = _unwrap_ray_deployment(target)
        if not callable(inner):
            raise BindError(f"@sg.deployment needs a class or a function, got {inner!r}", site=site)
        spec = DeploymentSpec(inner, {**inherited, **options}, site,
                              is_function=not isinstance(inner, type))
        setattr(inner, SPEC_ATTR, spec)
        inner.bind = spec.bind
        inner.options = spec.options
        return inner

    return decorate if _target is None else decorate(_target)


def _unwrap_ray_deployment(target: Any) -> tuple[Any, dict[str, Any]]:
    """A `ray.serve.Deployment` gives its class or function and the options its user set.

    Ray's own `deployment_to_schema` lists just those options; it is taken from the module the
    deployment's class comes from (Ray is loaded wherever such an object exists), so this layer
    neither imports Ray nor reads its private attributes."""
    if not type(target).__module__.startswith("ray.serve") or not hasattr(target, "func_or_class"):
        return target, {}
    to_schema = sys.modules[type(target).__module__].deployment_to_schema
    inherited = to_schema(target).model_dump(exclude_unset=True, mode="json")
    if inherited.pop("name", target.name) != target.func_or_class.__name__:
        inherited["name"] = target.name
    return target.func_or_class, inherited


def spec_of(obj: Any) -> DeploymentSpec | None:
    if isinstance(obj, DeploymentSpec):
        return obj
    spec = getattr(obj, SPEC_ATTR, None)
    return spec if isinstance(spec, DeploymentSpec) and spec.target is obj else None


@dataclass(frozen=True)
class BatchSpec:
    max_batch_size: int = 10
    batch_wait_timeout_s: float = 0.01
    max_concurrent_batches: int = 1
    batch_size_fn: Callable[[list[Any]], int] | None = None


def batch(
    _fn: Callable[..., Any] | None = None,
    *,
    max_batch_size: int = 10,
    batch_wait_timeout_s: float = 0.01,
    max_concurrent_batches: int = 1,
    batch_size_fn: Callable[[list[Any]], int] | None = None,
) -> Any:
    """Batch concurrent calls of one method: typed on the batch (`list[T] -> list[R]`), called
    with one `T`, giving one `R`. Both executors honour it; on Serve it becomes `serve.batch`.
    The method itself is returned unchanged, so calling it directly with a list still works."""
    site = user_site()
    checks = {
        "max_batch_size": max_batch_size >= 1,
        "batch_wait_timeout_s": batch_wait_timeout_s >= 0,
        "max_concurrent_batches": max_concurrent_batches >= 1,
    }
    for name, ok in checks.items():
        if not ok:
            raise OptionsError(f"sg.batch {name}={locals()[name]!r} is out of range",
                               site=site, hint="max_batch_size and max_concurrent_batches >= 1, "
                               "batch_wait_timeout_s >= 0")
    spec = BatchSpec(max_batch_size, batch_wait_timeout_s, max_concurrent_batches, batch_size_fn)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, BATCH_ATTR, spec)
        return fn

    return decorate if _fn is None else decorate(_fn)


def batch_spec(fn: Any) -> BatchSpec | None:
    return getattr(fn, BATCH_ATTR, None)


def health_check(target: Any) -> Callable[..., Any] | None:
    """A class stage's (or its instance's) own `check_health`, which Serve calls as the
    replica's health check: a method by that name that takes no arguments. One that takes
    arguments is a method the graph calls, not the hook."""
    method = getattr(target, "check_health", None)
    if not callable(method):
        return None
    unbound = isinstance(target, type) and inspect.isfunction(
        inspect.getattr_static(target, "check_health"))
    try:
        inspect.signature(method).bind(*([None] if unbound else []))
    except (TypeError, ValueError):
        return None
    return method


def map(target: Any, items: Any, *args: Any, **kwargs: Any) -> CallNode:
    """Call `target` once per element of the list `items`, concurrently; results in order.

    `target` is a method of an actor group (`enc.encode`) or a function stage. Extra arguments
    are passed to every call after the element.
    """
    if isinstance(target, MethodRef):
        call_target = CallTarget(target.node, target.method)
    elif (spec := spec_of(target)) is not None and spec.is_function:
        call_target = CallTarget(spec, None)
    else:
        hint = "pass enc.method (a method of a bound class) or an @sg.deployment function"
        if isinstance(target, CallNode):
            hint = "pass the method itself, not a bound call: sg.map(enc.encode, items)"
        elif spec_of(target) is not None:
            hint = f"bind the class first: sg.map({target.__name__}.bind().method, items)"
        raise BindError(f"sg.map cannot call {target!r}", site=user_site(), hint=hint)
    if not isinstance(items, (Node, list, tuple)):
        raise BindError(f"sg.map needs a list to map over, got {type(items).__name__}",
                        stage=call_target.spec.name, site=user_site(),
                        hint="pass a node that yields a list, e.g. inp.documents")
    return make_call(Op.MAP, call_target, (items, *args), kwargs,
                     check_args=(None, *args))

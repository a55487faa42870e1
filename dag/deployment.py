"""`sg.deployment`, `sg.batch` and `sg.map`: how user code becomes stages of a graph.

A decorated class or function stays what it was (a test can still call `Encoder("dir")`);
servegraph only attaches a `DeploymentSpec` and the `bind`/`options` entry points to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ..errors import BindError, OptionsError, SourceSite
from .nodes import CallNode, CallTarget, ClassNode, MethodRef, Node, Op, find_nodes, make_call
from .site import user_site

SPEC_ATTR = "__servegraph_deployment__"
BATCH_ATTR = "__servegraph_batch__"
MULTIPLEXED_ATTR = "__servegraph_multiplexed__"

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
        if "model_id" in options:
            raise BindError(
                f"model_id on the stage {self.name}: a model id is given per call, to a "
                "method of a class stage with an @sg.multiplexed loader",
                stage=self.name, site=user_site(),
                hint="stage.method.options(model_id=inp.tenant).bind(...) on a bound class "
                "that declares `@sg.multiplexed async def load(self, model_id)`")
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
    with one `T`, giving one `R`. Every executor batches it with servegraph's `Batcher` (a
    dynamic batcher). The method itself is returned unchanged, so calling it directly with a
    list still works."""
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


def map(target: Any, items: Any, *args: Any, chunk_size: int | None = None,
        max_width: int | None = None, **kwargs: Any) -> CallNode:
    """Call `target` once per element of the list `items`, concurrently; results in order.

    `target` is a method of an actor group (`enc.encode`) or a function stage. Extra arguments
    are passed to every call after the element. On Serve the elements travel to the target's
    replicas in chunks (`chunk_size` elements a call; by default chosen from their number and
    the replicas). `max_width` bounds the elements one request may map over (default:
    `SERVEGRAPH_MAX_MAP_WIDTH`, 100,000): a request over it is refused before any call.
    """
    for name, value in (("chunk_size", chunk_size), ("max_width", max_width)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise BindError(f"sg.map {name}={value!r}: give a whole number >= 1",
                            site=user_site(), hint=f"sg.map(f, items, {name}=64), or leave "
                            "it out for the default")
    if isinstance(target, MethodRef):
        call_target = target.target()
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
                     check_args=(None, *args),
                     map_options={"chunk_size": chunk_size, "max_width": max_width})


# --- sg.multiplexed: one stage, many models, each replica an LRU of them ---------------------


@dataclass(frozen=True)
class MultiplexSpec:
    """A class stage's model loader: `@sg.multiplexed(max_models_per_replica=N)` on
    `async def load(self, model_id)`. `loader` is the user's function as written."""

    loader: Callable[..., Any]
    max_models_per_replica: int
    site: SourceSite

    @property
    def name(self) -> str:
        return self.loader.__name__


_model_id: contextvars.ContextVar[str] = contextvars.ContextVar("servegraph_model_id",
                                                                default="")


def multiplexed_model_id() -> str:
    """The model id of the call being served (`method.options(model_id=...)`), inside a
    stage's method; "" outside such a call (as `serve.get_multiplexed_model_id`)."""
    return _model_id.get()


@contextlib.contextmanager
def serving_model(model_id: str) -> Iterator[None]:
    """Run a call with `multiplexed_model_id()` giving `model_id` (what runners wrap a
    multiplexed call in)."""
    token = _model_id.set(model_id)
    try:
        yield
    finally:
        _model_id.reset(token)


def require_model_id(value: Any) -> str:
    """A model id as a call gives it: a non-empty string, else a ValueError saying so."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"the model id is {value!r} ({type(value).__name__}): a model id "
                         "is a non-empty string")
    return value


def multiplexed(_fn: Callable[..., Any] | None = None, *,
                max_models_per_replica: int = 3) -> Any:
    """Declare a class stage's model loader, `async def load(self, model_id)`: each replica
    keeps the last `max_models_per_replica` models it loaded and drops the least recently
    used one to load another. The stage's methods call `await self.load(model_id)`; on Serve
    this is `serve.multiplexed`, so a call goes to a replica already holding its model."""
    site = user_site()
    if isinstance(max_models_per_replica, bool) or not isinstance(max_models_per_replica, int) \
            or max_models_per_replica < 1:
        raise OptionsError(f"sg.multiplexed max_models_per_replica={max_models_per_replica!r} "
                           "is out of range", site=site,
                           hint="give how many models one replica holds: an integer >= 1")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        _check_loader(fn, site)
        spec = MultiplexSpec(fn, max_models_per_replica, site)

        @functools.wraps(fn)
        async def load(owner: Any, model_id: str) -> Any:
            return await models_of(owner, spec).get(owner, model_id)

        setattr(load, MULTIPLEXED_ATTR, spec)
        return load

    return decorate if _fn is None else decorate(_fn)


def _check_loader(fn: Any, site: SourceSite) -> None:
    name = getattr(fn, "__qualname__", repr(fn))
    if not inspect.iscoroutinefunction(fn):
        raise BindError(f"the @sg.multiplexed loader {name} is not `async def`", site=site,
                        hint="declare it `async def load(self, model_id: str)` (as "
                        "serve.multiplexed requires)")
    params = list(inspect.signature(fn).parameters.values())
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) != 2 or any(p.kind not in plain for p in params):
        raise BindError(f"the @sg.multiplexed loader {name} must take one model id after "
                        f"self, not ({', '.join(p.name for p in params)})", site=site,
                        hint="declare it `async def load(self, model_id: str)`")


def multiplex_specs(target: Any) -> list[MultiplexSpec]:
    """The loaders a class stage (or its instance) declares, in definition order."""
    cls = target if isinstance(target, type) else type(target)
    found: dict[str, MultiplexSpec] = {}
    for base in reversed(cls.__mro__):
        for name, value in vars(base).items():
            spec = getattr(value, MULTIPLEXED_ATTR, None)
            if isinstance(spec, MultiplexSpec):
                found[name] = spec
            else:
                found.pop(name, None)
    return list(found.values())


def multiplex_spec(target: Any) -> MultiplexSpec | None:
    """The one loader of a class stage, if it has one (validate refuses two)."""
    specs = multiplex_specs(target)
    return specs[0] if specs else None


class ModelCache:
    """One stage instance's models, least recently used first; a load that would exceed the
    limit first drops the least recently used (as Serve's `_ModelMultiplexWrapper`).
    Concurrent calls for a model being loaded wait for that one load."""

    def __init__(self, spec: MultiplexSpec) -> None:
        self.spec = spec
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.loading: dict[str, asyncio.Future[Any]] = {}
        self.evicted = 0

    async def get(self, owner: Any, model_id: str) -> Any:
        require_model_id(model_id)
        if model_id in self.models:
            self.models.move_to_end(model_id)
            return self.models[model_id]
        if model_id in self.loading:
            return await asyncio.shield(self.loading[model_id])
        while self.models and len(self.models) + len(self.loading) >= \
                self.spec.max_models_per_replica:
            self.models.popitem(last=False)
            self.evicted += 1
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.loading[model_id] = done
        try:
            model = await self.spec.loader(owner, model_id)
        except asyncio.CancelledError:
            done.cancel()
            raise
        except Exception as exc:
            done.set_exception(exc)
            done.exception()  # retrieved: only the waiters, if any, see it
            raise
        finally:
            del self.loading[model_id]
        self.models[model_id] = model
        done.set_result(model)
        return model


def models_of(owner: Any, spec: MultiplexSpec) -> ModelCache:
    """The model cache of one stage instance for one loader, made at its first use."""
    key = f"__servegraph_models_{spec.name}"
    cache = vars(owner).get(key)
    if cache is None:
        cache = ModelCache(spec)
        setattr(owner, key, cache)
    return cache

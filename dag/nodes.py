"""The graph IR users build: small frozen nodes, each with an `op` from a fixed set.

Edges are read from a node's args and kwargs, which hold other nodes, constants, or lists,
tuples and dicts nesting either (`transform` is the one walker over that nesting). `bind`
returns a new node and never changes another. Every node records the user's source line.
"""

from __future__ import annotations

import difflib
import enum
import inspect
import itertools
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import BindError, SourceSite
from .site import user_site


class StageSpec(Protocol):
    """What nodes read of a stage definition (`deployment.DeploymentSpec`): typed here as a
    protocol so that this module does not import the one that builds nodes."""

    target: Any
    raw_options: Mapping[str, Any]
    site: SourceSite
    is_function: bool

    @property
    def name(self) -> str: ...


class Op(str, enum.Enum):
    INPUT = "input"    # the request payload
    SELECT = "select"  # a part of the payload: inp.field, inp["key"], inp[0]
    CLASS = "class"    # a class stage's constructor call: one actor group
    CALL = "call"      # one call of a stage (a method of a ClassNode, or a function stage)
    MAP = "map"        # a call per element of a list, concurrently, results in order
    BRANCH = "branch"  # switch, when, split, fallback, shadow: one arm taken (`control`)


_next_id = itertools.count(1).__next__
_active_inputs: list[InputNode] = []
_scopes: weakref.WeakKeyDictionary[InputNode, list[Node]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, eq=False)
class Node:
    op: Op
    target: Any
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    site: SourceSite
    id: int = field(default_factory=_next_id)

    def __post_init__(self) -> None:
        if _active_inputs and self.op is not Op.INPUT:
            _scopes[_active_inputs[-1]].append(self)

    def upstream(self) -> list[Node]:
        """The nodes this one reads, in argument order (duplicates removed)."""
        found: dict[int, Node] = {}
        for node in find_nodes((self.args, dict(self.kwargs))):
            found.setdefault(node.id, node)
        return list(found.values())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} #{self.id} {self.label}>"

    @property
    def label(self) -> str:
        return self.op.value


@dataclass(frozen=True)
class Selector:
    """One step into the payload: an attribute (or dict key by that name) or an item."""

    kind: str  # "attr" | "item"
    key: str | int

    def apply(self, value: Any) -> Any:
        if self.kind == "attr":
            if isinstance(value, Mapping):
                return value[self.key]
            return getattr(value, str(self.key))
        return value[self.key]

    def __str__(self) -> str:
        return f".{self.key}" if self.kind == "attr" else f"[{self.key!r}]"


class _Selectable(Node):
    def __getattr__(self, name: str) -> SelectNode:
        if name.startswith("_"):
            raise AttributeError(name)
        return SelectNode(Op.SELECT, Selector("attr", name), (self,), {}, user_site())

    def __getitem__(self, key: str | int) -> SelectNode:
        if not isinstance(key, (str, int)):
            raise BindError(f"cannot select [{key!r}]: use a string key or an integer index",
                            site=user_site())
        return SelectNode(Op.SELECT, Selector("item", key), (self,), {}, user_site())

    @property
    def root(self) -> InputNode:
        node: Node = self
        while not isinstance(node, InputNode):
            node = node.args[0]
        return node


class InputNode(_Selectable):
    """The request payload. Use inside `with sg.InputNode() as inp:`; pass a pydantic model
    type to validate the request body (`sg.InputNode(Query)`)."""

    def __init__(self, model: type | None = None) -> None:
        super().__init__(Op.INPUT, model, (), {}, user_site())
        _scopes[self] = []

    @property
    def model(self) -> type | None:
        return self.target

    @property
    def label(self) -> str:
        return "input" if self.model is None else f"input: {self.model.__name__}"

    def __enter__(self) -> InputNode:
        if self in _active_inputs:
            raise BindError("this InputNode is already open", site=user_site())
        _active_inputs.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _active_inputs.remove(self)

    @property
    def is_open(self) -> bool:
        return self in _active_inputs


def scope_of(inp: InputNode) -> list[Node]:
    """Every node created while `inp` was open, in creation order."""
    return list(_scopes.get(inp, ()))


class SelectNode(_Selectable):
    @property
    def label(self) -> str:
        return f"{self.root.label.split(':')[0]}{self.path}"

    @property
    def path(self) -> str:
        parts: list[str] = []
        node: Node = self
        while isinstance(node, SelectNode):
            parts.append(str(node.target))
            node = node.args[0]
        return "".join(reversed(parts))


@dataclass(frozen=True)
class CallTarget:
    """What a call node calls: a method of a ClassNode's actor group, or a function stage.
    `model_id` (a node, or a constant string) picks the model an `@sg.multiplexed` stage
    serves the call with: an edge of the graph like an argument, but not passed to the
    method (it reads it with `sg.multiplexed_model_id()`)."""

    group: ClassNode | StageSpec
    method: str | None
    model_id: Any = None

    @property
    def spec(self) -> StageSpec:
        return self.group.target if isinstance(self.group, ClassNode) else self.group

    @property
    def function(self) -> Callable[..., Any]:
        """The user's function (unbound for a method: its first parameter is `self`)."""
        target = self.spec.target
        return getattr(target, self.method) if self.method else target

    @property
    def label(self) -> str:
        base = self.spec.name
        return f"{base}.{self.method}" if self.method else base

    def check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Fail at bind time when the arguments cannot bind to the signature."""
        signature = signature_of(self.function)
        if signature is None:
            return
        bound_args = (None, *args) if self.method else args
        try:
            signature.bind(*bound_args, **kwargs)
        except TypeError as exc:
            raise BindError(
                f"{self.label}{_public_signature(signature, bool(self.method))} cannot take "
                f"these arguments: {exc}",
                stage=self.spec.name, site=user_site(),
                hint="pass one argument per parameter of the stage's method",
            ) from None


def signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    """The signature with string annotations evaluated where possible (for messages)."""
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:
        try:
            return inspect.signature(fn)
        except (TypeError, ValueError):
            return None


def _public_signature(signature: inspect.Signature, is_method: bool) -> str:
    params = list(signature.parameters.values())[1 if is_method else 0:]
    return str(signature.replace(parameters=params))


class ClassNode(Node):
    """A class stage bound to constructor arguments: one actor group (a Serve deployment)."""

    @property
    def label(self) -> str:
        return self.target.name

    def __getattr__(self, name: str) -> MethodRef:
        if name.startswith("_") and name != "__call__":
            raise AttributeError(name)
        cls = self.target.target
        if not callable(getattr(cls, name, None)):
            methods = [m for m in dir(cls) if not m.startswith("_") and callable(getattr(cls, m))]
            close = difflib.get_close_matches(name, methods, n=1)
            raise BindError(
                f"{cls.__name__} has no method {name!r}",
                stage=self.target.name, site=user_site(),
                hint=f"did you mean {close[0]!r}?" if close else f"methods: {', '.join(methods)}",
            )
        return MethodRef(self, name)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        raise BindError(
            f"{self.label} is already bound to its constructor arguments",
            stage=self.label, site=user_site(),
            hint=f"call a method: {self.label.lower()}.method.bind(...), "
            f"or {self.label.lower()}.__call__.bind(...) for __call__",
        )


@dataclass(frozen=True)
class MethodRef:
    """`enc.encode`: a method of an actor group, ready to `bind` or to `sg.map`; with
    `options(model_id=...)`, its calls are served by the model that id names."""

    node: ClassNode
    method: str
    model_id: Any = None

    def options(self, *, model_id: Any) -> MethodRef:
        """A copy whose calls name a model of the stage's `@sg.multiplexed` loader: a node
        (`inp.tenant`, a stage's output) or a constant string. On Serve a call goes to a
        replica that holds that model."""
        if not isinstance(model_id, Node) and not (isinstance(model_id, str) and model_id):
            raise BindError(
                f"model_id={model_id!r}: a model id is a non-empty string or a node giving one",
                stage=self.node.target.name, site=user_site(),
                hint="pass a part of the input (model_id=inp.tenant) or a constant string")
        return MethodRef(self.node, self.method, model_id)

    def bind(self, *args: Any, **kwargs: Any) -> CallNode:
        return make_call(Op.CALL, self.target(), args, kwargs)

    def target(self) -> CallTarget:
        return CallTarget(self.node, self.method, self.model_id)


class CallNode(Node):
    @property
    def call(self) -> CallTarget:
        return self.target

    def upstream(self) -> list[Node]:
        """The nodes this call reads: its arguments, then the node giving its model id."""
        found = super().upstream()
        model_id = self.target.model_id
        if isinstance(model_id, Node) and all(node.id != model_id.id for node in found):
            found.append(model_id)
        return found

    @property
    def label(self) -> str:
        prefix = "map " if self.op is Op.MAP else ""
        return prefix + self.target.label


@dataclass(frozen=True, eq=False)
class MapNode(CallNode):
    """`sg.map`'s node: a call per element. `chunk_size`: elements per call to the target's
    deployment on Serve (None: chosen from the width and the replicas); `max_width`: the most
    elements one request may map over (None: the global default)."""

    chunk_size: int | None = None
    max_width: int | None = None


def make_call(op: Op, target: CallTarget, args: tuple[Any, ...],
              kwargs: Mapping[str, Any], *, check_args: tuple[Any, ...] | None = None,
              map_options: Mapping[str, Any] | None = None) -> CallNode:
    site = user_site()
    check_data_arguments(target.spec.name, (args, dict(kwargs), target.model_id), site)
    target.check_arguments(args if check_args is None else check_args, kwargs)
    if op is Op.MAP:
        return MapNode(op, target, tuple(args), dict(kwargs), site, **(map_options or {}))
    return CallNode(op, target, tuple(args), dict(kwargs), site)


def check_data_arguments(stage: str, value: Any, site: SourceSite) -> None:
    for node in find_nodes(value):
        if isinstance(node, ClassNode):
            raise BindError(
                f"{node.label} (a class bound to its constructor) passed as a value",
                stage=stage, site=site,
                hint=f"call one of its methods and pass the result: "
                f"{node.label.lower()}.method.bind(...)",
            )
        if isinstance(node, _Selectable) and not node.root.is_open:
            raise BindError(
                "InputNode used outside its `with` block",
                stage=stage, site=site,
                hint="bind every stage inside `with sg.InputNode() as inp:`",
            )


def transform(value: Any, on_node: Callable[[Node], Any]) -> Any:
    """Rebuild `value` with every node in it (nested in lists, tuples, dicts) replaced."""
    if isinstance(value, Node):
        return on_node(value)
    if isinstance(value, list):
        return [transform(item, on_node) for item in value]
    if isinstance(value, tuple):
        return tuple(transform(item, on_node) for item in value)
    if isinstance(value, dict):
        return {key: transform(item, on_node) for key, item in value.items()}
    return value


def find_nodes(value: Any) -> Iterator[Node]:
    found: list[Node] = []
    transform(value, found.append)
    return iter(found)

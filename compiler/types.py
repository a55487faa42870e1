"""Static types of graph edges: what a producer yields and what a consumer's parameter takes.

Types come from annotations (as in Hamilton); an unannotated side is `Any` and always fits.
`is_assignable` answers "would pydantic accept every value of `src` for `dst`?" statically:
subclasses fit, int fits float (pydantic's lax mode), containers and unions recurse.
"""

from __future__ import annotations

import collections.abc as cabc
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from ..dag import BranchNode, CallNode, InputNode, Node, Op, SelectNode, batch_spec

_SEQUENCES = {list, tuple, set, frozenset, cabc.Sequence, cabc.Collection, cabc.Iterable,
              cabc.MutableSequence, cabc.Set}
_MAPPINGS = {dict, cabc.Mapping, cabc.MutableMapping}
_STREAMS = {cabc.AsyncIterator, cabc.AsyncIterable, cabc.AsyncGenerator}
_NUMERIC_WIDENING = {(int, float), (int, complex), (float, complex), (bool, int), (bool, float)}


def type_name(tp: Any) -> str:
    """A short readable name: `list[Hit]`, `int | None`, not module paths."""
    if tp is Any:
        return "Any"
    if tp is None or tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        return " | ".join(type_name(arg) for arg in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None and args:
        return f"{type_name(origin)}[{', '.join(type_name(arg) for arg in args)}]"
    if isinstance(tp, type):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception:
        return {}


def return_type(fn: Callable[..., Any]) -> Any:
    """The type one call yields: a batched method's `list[R]` unwraps to `R`."""
    if inspect.isgeneratorfunction(fn):
        return Any
    tp = hints(fn).get("return", Any)
    if inspect.isasyncgenfunction(fn):  # a stream: AsyncIterator[T] whatever the spelling
        args = typing.get_args(tp)
        return cabc.AsyncIterator[args[0] if args else Any]  # type: ignore[index]
    return element_type(tp) if batch_spec(fn) is not None else tp


def parameter_types(fn: Callable[..., Any], is_method: bool) -> dict[str, Any]:
    """Annotated parameter types; a batched method's first data parameter unwraps `list[T]`."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}
    params = params[1:] if is_method else params
    found = hints(fn)
    types_by_name = {name: found[name] for name in params if name in found}
    if batch_spec(fn) is not None and params and params[0] in types_by_name:
        types_by_name[params[0]] = element_type(types_by_name[params[0]])
    return types_by_name


def output_type(node: Node) -> Any:
    if isinstance(node, InputNode):
        return node.model if node.model is not None else Any
    if isinstance(node, SelectNode):
        parent = output_type(node.args[0])
        return _select_type(parent, node.target.kind, node.target.key)
    if isinstance(node, CallNode):
        produced = return_type(node.call.function)
        return list[produced] if node.op is Op.MAP else produced  # type: ignore[valid-type]
    if isinstance(node, BranchNode):
        return branch_type(node, output_type)
    return Any


def branch_type(node: BranchNode, type_of: Callable[[Node], Any]) -> Any:
    """What a branch yields: its primary's type (fallback, shadow), else its first arm's that
    is an annotated node (the typecheck pass makes the others agree with it)."""
    arms = node.arms[:1] if node.branching.kind in ("fallback", "shadow") else node.arms
    for arm in arms:
        if isinstance(arm, Node) and (produced := type_of(arm)) is not Any:
            return produced
    return Any


def _select_type(parent: Any, kind: str, key: Any) -> Any:
    parent = _strip(parent)
    if parent is Any:
        return Any
    if kind == "attr" and isinstance(parent, type) and issubclass(parent, BaseModel):
        field = parent.model_fields.get(str(key))
        return field.annotation if field is not None and field.annotation is not None else Any
    origin = typing.get_origin(parent)
    args = typing.get_args(parent)
    if origin in _MAPPINGS and len(args) == 2:
        return args[1]
    if origin is tuple and args and args[-1] is not Ellipsis and isinstance(key, int):
        return args[key] if -len(args) <= key < len(args) else Any
    if origin in _SEQUENCES and args:
        return args[0]
    if typing.is_typeddict(parent):
        return hints(parent).get(str(key), Any)
    return Any


def element_type(tp: Any) -> Any:
    """`list[X]` -> X; anything else -> Any."""
    tp = _strip(tp)
    args = typing.get_args(tp)
    return args[0] if typing.get_origin(tp) in _SEQUENCES and args else Any


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def is_assignable(src: Any, dst: Any) -> bool:
    """Would every value of type `src` validate as `dst`? Unknown shapes pass."""
    src, dst = _strip(src), _strip(dst)
    if src is Any or dst is Any or dst is object or src == dst:
        return True
    if isinstance(dst, typing.TypeVar) or isinstance(src, typing.TypeVar):
        return True
    if _is_union(src):
        return all(is_assignable(member, dst) for member in typing.get_args(src))
    if _is_union(dst):
        return any(is_assignable(src, member) for member in typing.get_args(dst))
    if typing.get_origin(src) is typing.Literal:
        return all(is_assignable(type(value), dst) for value in typing.get_args(src))
    if typing.get_origin(dst) is typing.Literal:
        return False
    if src is None or src is type(None):
        return dst is None or dst is type(None)
    return _assignable_origins(src, dst)


def _assignable_origins(src: Any, dst: Any) -> bool:
    src_origin = typing.get_origin(src) or src
    dst_origin = typing.get_origin(dst) or dst
    src_args, dst_args = typing.get_args(src), typing.get_args(dst)
    if src_origin in _STREAMS or dst_origin in _STREAMS:  # a stream feeds only a stream
        if not (src_origin in _STREAMS and dst_origin in _STREAMS):
            return False
        return is_assignable(src_args[0] if src_args else Any, dst_args[0] if dst_args else Any)
    if dst_origin in _SEQUENCES and src_origin in _SEQUENCES:
        if dst_origin is tuple and dst_args and dst_args[-1] is not Ellipsis:
            if src_origin is tuple and src_args and src_args[-1] is not Ellipsis:
                return len(src_args) == len(dst_args) and all(
                    is_assignable(s, d) for s, d in zip(src_args, dst_args))
            return True
        return is_assignable(_sequence_element(src), _sequence_element(dst))
    if dst_origin in _MAPPINGS:
        if src_origin in _MAPPINGS:
            if len(src_args) == 2 and len(dst_args) == 2:
                return is_assignable(src_args[0], dst_args[0]) and is_assignable(
                    src_args[1], dst_args[1])
            return True
        return isinstance(src_origin, type) and issubclass(src_origin, BaseModel)
    if isinstance(dst_origin, type) and issubclass(dst_origin, BaseModel):
        return src_origin in _MAPPINGS or (
            isinstance(src_origin, type) and issubclass(src_origin, dst_origin))
    if (src_origin, dst_origin) in _NUMERIC_WIDENING:
        return True
    if isinstance(src_origin, type) and isinstance(dst_origin, type):
        try:
            return issubclass(src_origin, dst_origin)
        except TypeError:
            return True
    return True


def _sequence_element(tp: Any) -> Any:
    args = typing.get_args(tp)
    if not args:
        return Any
    if typing.get_origin(tp) is tuple:
        if args[-1] is Ellipsis:
            return args[0]
        return typing.Union[args] if len(set(args)) > 1 else args[0]  # noqa: UP007
    return args[0]

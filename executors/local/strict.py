"""Strict mode of the local runner: every value crossing an edge is checked against the
consumer's annotation (and the producer's return annotation) with pydantic in strict mode, and
round-tripped through pickle, as a Ray hop would.
"""

from __future__ import annotations

import inspect
import pickle
import typing
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import PydanticUserError, TypeAdapter, ValidationError

from ...compiler.types import parameter_types, return_type, type_name
from ...errors import EdgeTypeError
from ..program import Step


class EdgeChecker:
    """Strict mode for one call node: annotations enforced with pydantic in strict mode, and
    every value pickled and unpickled as a Ray hop would."""

    def __init__(self, step: Step, fn: Callable[..., Any]) -> None:
        unbound = getattr(fn, "__func__", fn)
        is_method = unbound is not fn
        self.node = step.node
        self.signature = inspect.signature(fn)
        self.params = {name: _Check(tp) for name, tp in
                       parameter_types(unbound, is_method).items()}
        produced = return_type(unbound)
        self.returns = None if produced is Any else _Check(produced)

    def arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        streams: dict[int, AsyncIterator[Any]] = {}  # a stream is not pickled: its chunks are
        args = tuple(_stash(value, streams) for value in args)
        kwargs = {key: _stash(value, streams) for key, value in kwargs.items()}
        args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
        args = tuple(_unstash(value, streams) for value in args)
        kwargs = {key: _unstash(value, streams) for key, value in kwargs.items()}
        bound = self.signature.bind_partial(*args, **kwargs)
        for name, value in list(bound.arguments.items()):
            check = self.params.get(name)
            if check is None:
                continue
            if inspect.isasyncgen(value):
                bound.arguments[name] = self._checked_stream(value, check, name)
            else:
                self._check(check, value, f"parameter {name!r}")
        return bound.args, bound.kwargs

    async def _checked_stream(self, source: AsyncIterator[Any], check: _Check,
                              name: str) -> AsyncIterator[Any]:
        element = _Check(_element(check.annotation))
        async for chunk in source:
            chunk = pickle.loads(pickle.dumps(chunk))
            self._check(element, chunk, f"a chunk of parameter {name!r}")
            yield chunk

    def chunk(self, value: Any) -> Any:
        """One chunk a streaming stage yields, checked against its AsyncIterator[T]."""
        value = pickle.loads(pickle.dumps(value))
        if self.returns is not None:
            self._check(_Check(_element(self.returns.annotation)), value, "a chunk")
        return value

    def result(self, value: Any) -> Any:
        value = pickle.loads(pickle.dumps(value))
        if self.returns is not None:
            self._check(self.returns, value, "return value")
        return value

    def _check(self, check: _Check, value: Any, what: str) -> None:
        problem = check.problem(value)
        if problem is not None:
            raise EdgeTypeError(
                self.node.stage or self.node.label,
                f"strict mode: {what} of {self.node.label} expects "
                f"{type_name(check.annotation)}, got {type(value).__name__} {value!r:.80}"
                f" ({problem})",
                site=self.node.site, error_type="EdgeTypeError",
            )


class _Stashed:
    """Where a stream sat among a call's arguments while the rest was pickled."""

    def __init__(self, key: int) -> None:
        self.key = key


def _stash(value: Any, streams: dict[int, AsyncIterator[Any]]) -> Any:
    if inspect.isasyncgen(value):
        streams[len(streams)] = value
        return _Stashed(len(streams) - 1)
    return value


def _unstash(value: Any, streams: dict[int, AsyncIterator[Any]]) -> Any:
    return streams[value.key] if isinstance(value, _Stashed) else value


def _element(annotation: Any) -> Any:
    """T of AsyncIterator[T] (Any when not parameterised)."""
    args = typing.get_args(annotation)
    return args[0] if args else Any


class _Check:
    """One annotation enforced: by pydantic in strict mode, or, for a type pydantic has no
    schema for (a numpy array, a plain TypedDict before Python 3.12), by `isinstance` on its
    class."""

    def __init__(self, annotation: Any) -> None:
        self.annotation = annotation
        self.adapter: TypeAdapter[Any] | None = None
        origin = typing.get_origin(annotation) or annotation
        self.fallback: type | None = origin if isinstance(origin, type) else None
        try:
            self.adapter = TypeAdapter(annotation)
        except PydanticUserError:
            if typing.is_typeddict(annotation):
                self.fallback = dict

    def problem(self, value: Any) -> str | None:
        if self.adapter is not None:
            try:
                self.adapter.validate_python(value, strict=True)
            except ValidationError as exc:
                return str(exc.errors(include_url=False)[0]["msg"])
            return None
        if self.fallback is not None and not isinstance(value, self.fallback):
            return f"not an instance of {self.fallback.__name__}"
        return None

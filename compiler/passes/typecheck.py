"""The typecheck pass: every annotated edge must carry a type its consumer accepts.

Like Hamilton, a mismatch fails before anything runs and names both stages, the parameter,
both types and the fix. Unannotated edges pass. A map's element type is the list's element
type; a batched method is checked per call (`list[T] -> list[R]` seen as `T -> R`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ...dag import BranchNode, CallNode, Node, Op
from ...errors import TypeMismatchError
from ..state import CompileState
from ..types import (
    branch_type,
    element_type,
    is_assignable,
    output_type,
    parameter_types,
    type_name,
)

PASS = "typecheck"


def typecheck(state: CompileState) -> CompileState:
    facts = TypeFacts()
    for node in state.graph.nodes:
        if isinstance(node, CallNode):
            _check_call(node, facts)
        elif isinstance(node, BranchNode):
            _check_branch(node, facts)
    return state


class TypeFacts:
    """What the annotations of each stage function say, read once per function for one pass:
    a pipeline of thousands of calls has few distinct functions, and reading a signature and
    its type hints costs far more than checking an edge. Keyed by id, with the function kept
    beside its facts so that no id is reused while they live."""

    def __init__(self) -> None:
        self._facts: dict[tuple[str, int], tuple[Any, Any]] = {}

    def _memo(self, kind: str, fn: Any, compute: Callable[[], Any]) -> Any:
        key = (kind, id(fn))
        if key not in self._facts:
            self._facts[key] = (fn, compute())
        return self._facts[key][1]

    def signature(self, fn: Any) -> inspect.Signature | None:
        def read() -> inspect.Signature | None:
            try:
                return inspect.signature(fn)
            except (TypeError, ValueError):
                return None
        return self._memo("signature", fn, read)

    def parameter_types(self, fn: Any, is_method: bool) -> dict[str, Any]:
        return self._memo(f"parameters{is_method}", fn, lambda: parameter_types(fn, is_method))

    def output_type(self, node: Node) -> Any:
        """`types.output_type`; a call's depends only on its function and op, read once."""
        if isinstance(node, BranchNode):
            return branch_type(node, self.output_type)
        if not isinstance(node, CallNode):
            return output_type(node)
        return self._memo(f"output {node.op.value}", node.call.function,
                          lambda: output_type(node))


def bound_parameters(node: CallNode, facts: TypeFacts | None = None) -> dict[str, Any]:
    """Parameter name -> the bound argument (a node, a constant, or a container of them).
    A map's first parameter is bound to the list node it maps over."""
    is_method = node.call.method is not None
    signature = (facts or TypeFacts()).signature(node.call.function)
    if signature is None:
        return {}
    try:
        bound = signature.bind(*((None,) if is_method else ()), *node.args, **node.kwargs)
    except (TypeError, ValueError):
        return {}
    arguments = dict(bound.arguments)
    if is_method:
        arguments.pop(next(iter(signature.parameters)))
    kinds = {name: p.kind for name, p in signature.parameters.items()}
    return {name: value for name, value in arguments.items()
            if kinds[name] not in (inspect.Parameter.VAR_POSITIONAL,
                                   inspect.Parameter.VAR_KEYWORD)}


def _check_call(node: CallNode, facts: TypeFacts) -> None:
    expected = facts.parameter_types(node.call.function, node.call.method is not None)
    arguments = bound_parameters(node, facts)
    for position, (name, value) in enumerate(arguments.items()):
        if name not in expected:
            continue
        element_of_map = node.op is Op.MAP and position == 0
        _check_value(node, name, value, expected[name], element_of_map, facts)


def _check_value(node: CallNode, param: str, value: Any, expected: Any, of_map: bool,
                 facts: TypeFacts) -> None:
    if isinstance(value, Node):
        produced = facts.output_type(value)
        if of_map:
            produced = element_type(produced)
        if not is_assignable(produced, expected):
            _fail(node, param, value, produced, expected, of_map)
    elif isinstance(value, (list, tuple)) and not of_map:
        element = element_type(expected)
        for item in value:
            _check_value(node, param, item, element, False, facts)


def _fail(node: CallNode, param: str, producer: Node, produced: Any, expected: Any,
          of_map: bool) -> None:
    source = f"{producer.label} ({producer.site})"
    what = "each element of" if of_map else "the value of"
    raise TypeMismatchError(
        f"parameter {param!r} of {node.call.label} expects {type_name(expected)}, but "
        f"{what} {source} is {type_name(produced)}",
        stage=node.label, site=node.site,
        hint=f"change the annotation of {param!r} or of {producer.label}'s return type, or "
        "put a stage between them that converts the value",
    )


def _check_branch(node: BranchNode, facts: TypeFacts) -> None:
    """The arms that are nodes must yield types that agree (one assignable to the other), so
    what reads the branch gets one type whichever arm ran; constants are not checked (a
    fallback's `default=None` is the usual one). A shadow's candidate must agree too: it is
    a stand-in for the primary."""
    how = node.branching
    typed = [(label, arm, facts.output_type(arm)) for label, arm in zip(how.arms, node.arms)
             if isinstance(arm, Node)]
    typed = [entry for entry in typed if entry[2] is not Any]
    for label, arm, produced in typed[1:]:
        first_label, first, expected = typed[0]
        if is_assignable(produced, expected) or is_assignable(expected, produced):
            continue
        raise TypeMismatchError(
            f"the arms of {node.label} disagree: {first_label} is {first.label} "
            f"({first.site}) returning {type_name(expected)}, {label} is {arm.label} "
            f"({arm.site}) returning {type_name(produced)}",
            stage=node.label, site=node.site,
            hint="make every arm return the same type (what reads the branch must accept "
            "whichever arm ran), or convert in a stage inside the arm")

"""The one codec for argument templates: how a plan writes the arguments of its calls.

A call's arguments are Python values with graph nodes inside (`b.bind(q, {"k": [a, 1]})`). The
plan keeps each one as a template, a JSON object of exactly one key, its tag:

    {"$ref": "n3"}                          the value of the plan node n3
    {"$const": 0.5}                         a JSON scalar: str, number, bool or null
    {"$list": [t, ...]}  {"$tuple": [t, ...]}
    {"$dict": {"key": t, ...}}              a dict with str keys, each to a template
    {"$opaque": {"index": 0, "repr": "…"}}  a constant JSON cannot hold: kept in the plan's
                                            memory (`PlanMemory.constants`), shown by its repr

User data never stands where a tag is read: every list and dict of the user's is wrapped in its
own tag, and `$const` holds only scalars, so this module reads a template's one tag, then its
body by the tag's shape, and never looks a key up in the user's data. A user's dict
`{"ref": node}` is `{"$dict": {"ref": {"$ref": "n1"}}}`. The `$` is for people reading the
JSON: a tag never looks like a key of theirs.

Everything that knows the form is here: `ValueEncoder` (values -> templates), `decode`
(templates -> values), `refs` (the node ids a template reads, in order), and `builder` /
`call_builder`, which precompile a template into a function of its leaves (the node values it
reads, in `RefSlots` order), as the scheduling core runs them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..dag import Node
from ..errors import CompileError

Template = dict[str, Any]
Build = Callable[[Sequence[Any]], Any]
BuildCall = Callable[[Sequence[Any]], tuple[tuple[Any, ...], dict[str, Any]]]

REF, CONST, LIST, TUPLE, DICT, OPAQUE = "$ref", "$const", "$list", "$tuple", "$dict", "$opaque"
TAGS = frozenset((REF, CONST, LIST, TUPLE, DICT, OPAQUE))
REPR_LIMIT = 200  # characters of an opaque constant's repr kept in the plan


def ref(node_id: str) -> Template:
    """The template of one node's value."""
    return {REF: node_id}


def const(value: Any) -> Template:
    """The template of a JSON scalar (e.g. a redacted secret shown in its place)."""
    return {CONST: value}


class ValueEncoder:
    """Python values with graph nodes inside -> templates. `ids` maps a graph node's id to its
    plan id; a constant JSON cannot hold is appended to `constants` and named by its index."""

    def __init__(self, ids: Mapping[int, str], constants: list[Any]) -> None:
        self.ids = ids
        self.constants = constants

    def encode(self, value: Any) -> Template:
        if isinstance(value, Node):
            return ref(self.ids[value.id])
        if isinstance(value, list):
            return {LIST: [self.encode(item) for item in value]}
        if isinstance(value, tuple):
            return {TUPLE: [self.encode(item) for item in value]}
        if isinstance(value, dict) and all(isinstance(key, str) for key in value):
            return {DICT: {key: self.encode(item) for key, item in value.items()}}
        if is_json_scalar(value):
            return const(value)
        self.constants.append(value)
        return {OPAQUE: {"index": len(self.constants) - 1, "repr": repr(value)[:REPR_LIMIT]}}


def is_json_scalar(value: Any) -> bool:
    """A value JSON writes and reads back equal: no NaN or infinity, which pydantic would
    write as null."""
    if isinstance(value, (list, tuple, dict)):
        return False
    try:
        return bool(json.loads(json.dumps(value, allow_nan=False)) == value)
    except (TypeError, ValueError):
        return False


def split(template: Any) -> tuple[str, Any]:
    """A template's tag and body; a `CompileError` for anything else (a plan JSON from
    another version, or edited by hand)."""
    if isinstance(template, dict) and len(template) == 1:
        tag, body = next(iter(template.items()))
        if tag in TAGS:
            return tag, body
    raise CompileError(
        f"{str(template)[:REPR_LIMIT]} is not an argument template", pass_name="load",
        hint="a plan's arguments are one-key objects tagged " + ", ".join(sorted(TAGS))
        + "; compile the graph again with this servegraph")


def ref_of(template: Any) -> str | None:
    """The node id when the template is one node's value whole, else None."""
    if isinstance(template, dict) and len(template) == 1 and REF in template:
        return template[REF]
    return None


def refs(*templates: Any) -> Iterator[str]:
    """The node ids the templates read, in order (repeated as often as they are read)."""
    for template in templates:
        tag, body = split(template)
        if tag == REF:
            yield body
        elif tag in (LIST, TUPLE):
            yield from refs(*body)
        elif tag == DICT:
            yield from refs(*body.values())


def decode(template: Any, values: Mapping[str, Any] | None = None,
           constants: Sequence[Any] = ()) -> Any:
    """The Python value of a template: refs read from `values` (a `KeyError` without them),
    opaque constants from `constants` (the plan's memory)."""
    tag, body = split(template)
    if tag == REF:
        if values is None:
            raise KeyError(body)
        return values[body]
    if tag == CONST:
        return body
    if tag == LIST:
        return [decode(item, values, constants) for item in body]
    if tag == TUPLE:
        return tuple(decode(item, values, constants) for item in body)
    if tag == DICT:
        return {key: decode(item, values, constants) for key, item in body.items()}
    if body["index"] >= len(constants):
        raise CompileError(
            f"the constant {body['repr']} was not saved with the plan", pass_name="load",
            hint="compile the graph in this process, or use JSON-able constants")
    return constants[body["index"]]


class RefSlots(list[str]):
    """The refs a call's templates read, in order, each once, with its leaf index beside it
    (a call or an output of thousands of refs stays linear to compile)."""

    def __init__(self) -> None:
        super().__init__()
        self.slots: dict[str, int] = {}

    def slot(self, node_id: str) -> int:
        if node_id not in self.slots:
            self.slots[node_id] = len(self)
            self.append(node_id)
        return self.slots[node_id]


def builder(template: Any, slots: RefSlots, constants: Sequence[Any] = ()) -> Build:
    """A template -> a function of the leaves (the values of `slots`, in order) that rebuilds
    the value; adds the refs it reads to `slots`. Constants are decoded once, here."""
    tag, body = split(template)
    if tag == REF:
        index = slots.slot(body)
        return lambda leaves: leaves[index]
    if tag in (LIST, TUPLE):
        parts = [builder(item, slots, constants) for item in body]
        kind = list if tag == LIST else tuple
        return lambda leaves: kind(part(leaves) for part in parts)
    if tag == DICT:
        fields = {key: builder(item, slots, constants) for key, item in body.items()}
        return lambda leaves: {key: field(leaves) for key, field in fields.items()}
    constant = decode(template, None, constants)
    return lambda leaves: constant


def call_builder(args: Sequence[Any], kwargs: Mapping[str, Any], slots: RefSlots,
                 constants: Sequence[Any] = ()) -> BuildCall:
    """A call's argument templates -> a function of the leaves giving `(args, kwargs)`."""
    arg_builds = [builder(a, slots, constants) for a in args]
    kw_builds = {key: builder(v, slots, constants) for key, v in kwargs.items()}
    if not kw_builds and slots == [ref_of(a) for a in args]:
        # the common case: the arguments are the leaves, each a distinct node value, in order
        return lambda leaves: (tuple(leaves), {})
    return lambda leaves: (tuple(build(leaves) for build in arg_builds),
                           {key: build(leaves) for key, build in kw_builds.items()})

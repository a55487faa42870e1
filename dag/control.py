"""Control flow in the graph: `switch`, `when`, `split`, `fallback` and `shadow`.

Each makes one `BranchNode` (op `branch`) whose arguments are its key and its arms: the key
first, then one argument per arm, each a node, a constant, or a list or dict of them (a
missing key is the constant None). The node's `target`, a `Branching`, says which arm a
request takes:

- `switch(key, {case: arm, ...}, default=arm)`: the arm of the case equal to the key's value;
  no such case and no default is the caller's error (an `InputError`, HTTP 422).
- `when(cond, then, otherwise)`: `then` when the condition's value is truthy.
- `split({arm: weight, ...}, key=None)`: an arm drawn by weight, by a stable hash of `key`
  when given (sticky: a key always lands on the same arm), at random otherwise (`seed`).
- `fallback(node, default)`: the node's value, or `default` when it fails or times out.
- `shadow(primary, candidate)`: the primary's value; the candidate runs on the same inputs,
  its result dropped and its errors logged, and the request does not wait for it.

Only the arm taken runs: the compiler marks the nodes only untaken arms use as lazy (the
plan's `NodePlan.lazy`), and the scheduling core starts them only when an arm needs them.
A node shared with the rest of the graph runs once, as always. The compiler checks that the
arms' output types agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import BindError, SourceSite
from .nodes import Node, Op, check_data_arguments, find_nodes
from .site import user_site

BranchKind = Literal["switch", "when", "split", "fallback", "shadow"]
CASE_TYPES = (str, int, bool, type(None))  # switch cases: JSON scalars, kept in the plan


@dataclass(frozen=True)
class Branching:
    """How a branch node picks its arm. `arms` labels the arms (`'en'`, `default`, `then`,
    a split's variant names), aligned with the node's arguments after the key."""

    kind: BranchKind
    name: str | None
    arms: tuple[str, ...]
    cases: tuple[Any, ...] = ()        # switch: one per case arm (the default has none)
    default: bool = False              # switch: the last arm is the default
    weights: tuple[float, ...] = ()    # split: one per arm
    sticky: bool = False               # split: by a hash of its key
    seed: int | None = None            # split without a key: its random generator's seed


class BranchNode(Node):
    """A switch, when, split, fallback or shadow: `args` are its key, then its arms."""

    @property
    def branching(self) -> Branching:
        return self.target

    @property
    def key(self) -> Any:
        return self.args[0]

    @property
    def arms(self) -> tuple[Any, ...]:
        return self.args[1:]

    @property
    def label(self) -> str:
        name = self.branching.name
        return f"{self.branching.kind} {name}" if name else self.branching.kind


def switch(key: Any, cases: Mapping[Any, Any], default: Any = None, *,
           name: str | None = None) -> BranchNode:
    """The arm of the case equal to `key`'s value (`default` when none is; without a
    default, a key matching no case fails the request as the caller's error)."""
    site = user_site()
    if not isinstance(cases, Mapping) or not cases:
        raise BindError("sg.switch needs at least one case", stage=_stage(name, "switch"),
                        site=site, hint='sg.switch(inp.lang, {"en": en.bind(x), '
                        '"fr": fr.bind(x)}, default=...)')
    for case in cases:
        if not isinstance(case, CASE_TYPES) or isinstance(case, float):
            raise BindError(f"switch case {case!r} is a {type(case).__name__}",
                            stage=_stage(name, "switch"), site=site,
                            hint="cases are strings, integers, booleans or None (they are "
                            "written into the plan as JSON)")
    arms = [*cases.values()]
    labels = _case_labels(list(cases))
    if default is not None:
        arms.append(default)
        labels.append("default")
    branching = Branching("switch", _name(name, site), tuple(labels), cases=tuple(cases),
                          default=default is not None)
    return _branch(branching, key, arms, site)


def when(cond: Any, then: Any, otherwise: Any, *, name: str | None = None) -> BranchNode:
    """`then` when `cond`'s value is truthy, else `otherwise`: a cascade's escalation."""
    site = user_site()
    return _branch(Branching("when", _name(name, site), ("then", "otherwise")), cond,
                   [then, otherwise], site)


def split(variants: Mapping[Any, float], key: Any = None, *, name: str | None = None,
          seed: int | None = None) -> BranchNode:
    """One variant per request, drawn by weight: `{v1.bind(x): 90, v2.bind(x): 10}`. With a
    `key` (e.g. `inp.user_id`) a stable hash of its value picks the variant, so a key always
    gets the same one; without, a random draw (`seed` makes it repeatable). The running
    application's weights can change without a restart: they are the driver's
    `user_config` (`{"splits": {name: {variant: weight}}}`)."""
    site = user_site()
    stage = _stage(name, "split")
    if not isinstance(variants, Mapping) or len(variants) < 2:
        raise BindError("sg.split needs at least two variants", stage=stage, site=site,
                        hint="sg.split({v1.bind(x): 90, v2.bind(x): 10}, key=inp.user_id)")
    weights = []
    for arm, weight in variants.items():
        if not is_weight(weight):
            raise BindError(f"split weight {weight!r} of {_arm_label(arm)} is not a positive "
                            "number", stage=stage, site=site,
                            hint="give each variant a weight > 0 (they need not sum to 100)")
        weights.append(float(weight))
    labels = _variant_names([_arm_label(arm) for arm in variants])
    branching = Branching("split", _name(name, site), tuple(labels), weights=tuple(weights),
                          sticky=key is not None, seed=seed)
    return _branch(branching, key, list(variants), site)


def fallback(node: Any, default: Any = None, *, name: str | None = None) -> BranchNode:
    """`node`'s value, or `default` (a value, or a node run only then) when it fails or runs
    past its stage's `timeout_s`. The trace and the log say that the fallback was taken, and
    why."""
    site = user_site()
    _need_node(node, "fallback", name, site, "sg.fallback(enrich.bind(x), default=None)")
    return _branch(Branching("fallback", _name(name, site), ("primary", "default")), None,
                   [node, default], site)


def shadow(primary: Any, candidate: Any, *, name: str | None = None) -> BranchNode:
    """The primary's value; the candidate runs too (give it the same inputs), its result
    dropped and its failure only logged. The request does not wait for the candidate."""
    site = user_site()
    example = "sg.shadow(ranker.bind(x), candidate.bind(x))"
    _need_node(primary, "shadow", name, site, example)
    _need_node(candidate, "shadow", name, site, example)
    return _branch(Branching("shadow", _name(name, site), ("primary", "candidate")), None,
                   [primary, candidate], site)


def is_weight(value: Any) -> bool:
    """A split's weight: a positive, finite number (not a bool); here and in a running
    driver's new weights (`executors.branches`)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) \
        and math.isfinite(value) and value > 0


def matches_case(case: Any, value: Any) -> bool:
    """Whether a switch's case takes a key of this value: equal, and `True` is not the case
    `1` (nor `1` the case `True`); for the core's choice and a test's forced route alike."""
    return case == value and isinstance(case, bool) == isinstance(value, bool)


def _branch(branching: Branching, key: Any, arms: list[Any], site: SourceSite) -> BranchNode:
    check_data_arguments(_stage(branching.name, branching.kind), (key, arms), site)
    return BranchNode(Op.BRANCH, branching, (key, *arms), {}, site)


def _need_node(value: Any, kind: str, name: str | None, site: SourceSite, example: str) -> None:
    if not isinstance(value, Node):
        raise BindError(f"sg.{kind} needs a node, got {type(value).__name__} {value!r}",
                        stage=_stage(name, kind), site=site, hint=example)


def _name(name: str | None, site: SourceSite) -> str | None:
    if name is not None and (not isinstance(name, str)
                             or not name.replace("_", "").replace("-", "").isalnum()):
        raise BindError(f"branch name {name!r} must be letters, digits, '_' or '-'", site=site,
                        hint='name="ranker_ab"')
    return name


def _stage(name: str | None, kind: str) -> str:
    return f"{kind} {name}" if name else kind


def _arm_label(arm: Any) -> str:
    nodes = list(find_nodes(arm))
    return nodes[0].label if len(nodes) == 1 and nodes[0] is arm else repr(arm)


def _case_labels(cases: list[Any]) -> list[str]:
    """A switch's arms named by their cases: a string as it is (`en`), unless another case or
    the default would read the same; then, like every other case, its repr (`1`, `None`)."""
    plain = [case if isinstance(case, str) else repr(case) for case in cases]
    clashes = {label for label in plain if plain.count(label) > 1 or label == "default"}
    return [repr(case) if label in clashes else label for case, label in zip(cases, plain)]


def _variant_names(labels: list[str]) -> list[str]:
    """A split's variants named by their labels (a stage's method), made unique."""
    seen: dict[str, int] = {}
    names = []
    for label in labels:
        label = label.removesuffix(".__call__")
        seen[label] = seen.get(label, 0) + 1
        names.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return names

"""Which arm a branch node takes for one request: pure functions of its `BranchPlan`, the
key's value and the weights the running application holds (the scheduling core calls these;
it starts the chosen arm's nodes itself).

A split with a key is sticky: a stable hash of the key's JSON (blake2b, the same in every
process and on every replica) places it in [0, 1), and the arm whose cumulative share of
the weights covers that point is taken. Without a key a split draws from a generator seeded
with the split's `seed` (one per program: one per driver replica on Serve).

`Routing` holds the weights: the plan's, until a running application's driver gets a
`user_config` of `{"splits": {split: {variant: weight}}}` (`reconfigure`), which Serve hands to
the running driver replicas without restarting any replica.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..compiler import BranchPlan, NodePlan
from ..dag import is_weight, matches_case
from ..errors import InputError

SPLITS = "splits"  # the driver's user_config key


class Routing:
    """The weights of a plan's splits, and each random split's generator."""

    def __init__(self, nodes: Sequence[NodePlan]) -> None:
        self.splits = {node.branch.name: node.branch for node in nodes
                       if node.branch is not None and node.branch.kind == "split"}
        self.weights = {name: list(branch.weights) for name, branch in self.splits.items()}
        self.draws = {name: random.Random(branch.seed) for name, branch in self.splits.items()}

    def reconfigure(self, config: Any) -> None:
        """New weights from a driver's user_config; every split named must exist, and every
        one of its variants get a positive weight (else a ValueError saying which)."""
        if not isinstance(config, Mapping) or not isinstance(config.get(SPLITS, {}), Mapping):
            raise ValueError(f'the driver\'s user_config must look like {{"{SPLITS}": '
                             f'{{split: {{variant: weight}}}}}}, got {config!r}')
        updated = {}
        for name, weights in config.get(SPLITS, {}).items():
            updated[name] = self._checked(name, weights)
        self.weights.update(updated)

    def _checked(self, name: str, weights: Any) -> list[float]:
        branch = self.splits.get(name)
        if branch is None:
            raise ValueError(f"no split named {name!r}; splits: {', '.join(self.splits)}")
        if not isinstance(weights, Mapping) or set(weights) != set(branch.arms):
            raise ValueError(f"split {name!r} needs a weight for each of its variants "
                             f"{branch.arms}, got {weights!r}")
        values = [weights[arm] for arm in branch.arms]
        for arm, weight in zip(branch.arms, values):
            if not is_weight(weight):
                raise ValueError(f"split {name!r}: weight {weight!r} of {arm!r} is not a "
                                 "positive number")
        return [float(weight) for weight in values]

    def choose(self, node: NodePlan, key: Any) -> int:
        """The index of the arm `node` (a branch) takes for a key of this value."""
        branch: BranchPlan = node.branch  # type: ignore[assignment]
        if branch.forced is not None:
            return branch.arms.index(branch.forced)
        if branch.kind == "when":
            return 0 if key else 1
        if branch.kind == "switch":
            return switch_arm(node, key)
        weights = self.weights[branch.name]
        point = unit_hash(key) if branch.sticky else self.draws[branch.name].random()
        return weighted_arm(weights, point)


def switch_arm(node: NodePlan, key: Any) -> int:
    """The arm of the case equal to `key` (the default's when none is); no such arm is the
    caller's error, naming the switch, the value and the cases."""
    branch: BranchPlan = node.branch  # type: ignore[assignment]
    for index, case in enumerate(branch.cases):
        if matches_case(case, key):
            return index
    if branch.default:
        return len(branch.arms) - 1
    cases = ", ".join(map(repr, branch.cases))
    raise InputError(
        f"{node.label} ({node.site}) has no case for {key!r} and no default; cases: {cases}",
        errors=[{"loc": [node.label], "msg": f"no case for {key!r}", "type": "no_case"}])


def unit_hash(key: Any) -> float:
    """A stable point in [0, 1) for a key's value: the same in every process."""
    text = json.dumps(key, sort_keys=True, default=repr).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / 2.0 ** 64


def weighted_arm(weights: Sequence[float], point: float) -> int:
    """The arm whose cumulative share of `weights` covers `point` (in [0, 1))."""
    total = sum(weights)
    covered = 0.0
    for index, weight in enumerate(weights):
        covered += weight / total
        if point < covered:
            return index
    return len(weights) - 1

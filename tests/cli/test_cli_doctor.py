"""`servegraph doctor` and `top` without a cluster: one usage line, as the other cluster verbs
(their output on a live application: tests/serving/test_doctor_live.py)."""

from __future__ import annotations

import os

import pytest

from tests.cli.test_cli import servegraph


@pytest.mark.parametrize("verb", [["doctor", "search"], ["top", "search", "--once"]])
def test_doctor_and_top_need_a_cluster(verb: list[str]) -> None:
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    done = servegraph(*verb, env=env)
    assert done.returncode == 1
    assert done.stderr == (f"servegraph {verb[0]}: error: no cluster to talk to: pass "
                           "--address (e.g. 127.0.0.1:6379) or set RAY_ADDRESS\n")


def test_help_lists_doctor_and_top() -> None:
    text = servegraph("--help").stdout
    assert "doctor" in text and "top" in text

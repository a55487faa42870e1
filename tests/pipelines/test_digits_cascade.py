"""The digits cascade: which arm runs (read from traces), that an escalated answer is the
ensemble's, the held-out accuracy at TAU, the threshold rule, the stages on literal inputs,
and the same answers from every executor."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

import servegraph as sg
from servegraph.pipelines import digits, digits_cascade

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

SHARED = ["input: DigitsRequest", "input.images", "preprocess", "LogisticRegressionModel.predict",
          "confident", "when cascade"]
EXPENSIVE = ["Cnn.predict", "NearestNeighboursModel.predict", "vote"]


@pytest.fixture(scope="module")
def cascade() -> sg.LocalExecutor:
    """One executor for the module: the stages (and their models) are built once."""
    return sg.LocalExecutor(digits_cascade.graph)


@pytest.fixture(scope="module")
def ensemble() -> sg.LocalExecutor:
    return sg.LocalExecutor(digits.graph)


@pytest.fixture(scope="module")
def top_probabilities() -> np.ndarray:
    """The logistic regression's top probability per held-out image."""
    images = digits.load_split().test_x.tolist()
    return np.asarray(digits.LogisticRegressionModel().predict(images)).max(axis=1)


def one_image(index: int) -> dict[str, Any]:
    return {"images": [digits.load_split().test_images[index]]}


def test_a_confident_image_is_answered_by_logreg_alone(
        cascade: sg.LocalExecutor, top_probabilities: np.ndarray) -> None:
    index = int(np.argmax(top_probabilities >= digits_cascade.TAU))  # the first confident one
    assert index == 0
    trace = cascade.trace(one_image(index))
    assert trace.error is None
    assert sorted(trace.labels) == sorted([*SHARED, "cheap_answer"])  # each ran once
    assert trace.output == [{"label": 2, "confidence": 0.6381, "votes": {"logreg": 2}}]
    assert not digits_cascade.escalated(trace.output[0])


def test_an_unconfident_image_escalates_to_the_ensembles_answer(
        cascade: sg.LocalExecutor, ensemble: sg.LocalExecutor,
        top_probabilities: np.ndarray) -> None:
    index = int(np.argmax(top_probabilities < digits_cascade.TAU))  # the first unconfident one
    assert index == 12
    trace = cascade.trace(one_image(index))
    assert trace.error is None
    assert sorted(trace.labels) == sorted([*SHARED, *EXPENSIVE])  # logreg ran once, shared
    assert trace.output == ensemble.call(one_image(index))
    assert digits_cascade.escalated(trace.output[0])


def test_one_unsure_image_escalates_the_whole_request(cascade: sg.LocalExecutor,
                                                      ensemble: sg.LocalExecutor) -> None:
    payload = {"images": digits.load_split().test_images[10:14]}  # 12 is the unsure one
    assert cascade.call(payload) == ensemble.call(payload)


def test_held_out_accuracy_is_within_half_a_point_of_the_ensemble(
        cascade: sg.LocalExecutor, ensemble: sg.LocalExecutor) -> None:
    results = digits_cascade.held_out(cascade, ensemble)
    assert results["ensemble"] == digits_cascade.Outcome(443 / 450, 1.0, 450)
    assert results["cascade"] == digits_cascade.Outcome(441 / 450, 15 / 450, 450)
    assert (results["ensemble"].accuracy - results["cascade"].accuracy) * 100 <= 0.5


def test_tau_is_the_rules_choice_on_the_validation_split() -> None:
    choice = digits_cascade.choose_tau()
    assert choice == digits_cascade.Choice(tau=digits_cascade.TAU, ensemble_accuracy=335 / 337,
                                           cascade_accuracy=335 / 337, escalation=9 / 337,
                                           images=337)
    below = digits_cascade.choose_tau((0.45,))  # the grid's step before: one error more
    assert (below.tau, round(below.cascade_accuracy * 337)) == (0.45, 334)


def test_the_validation_split_is_carved_from_training_not_test() -> None:
    images, labels = digits_cascade.validation_split()
    split = digits.load_split()
    assert (len(images), len(labels)) == (337, 337)
    training = {row.tobytes() for row in split.train_x}
    assert all(row.tobytes() in training for row in images)


def test_confident_needs_every_image_at_tau() -> None:
    assert digits_cascade.confident([[0.5, 0.5], [0.1, 0.9]], 0.5) is True
    assert digits_cascade.confident([[0.6, 0.4], [0.51, 0.49]], 0.55) is False


def test_cheap_answer_has_the_ensembles_shape() -> None:
    assert digits_cascade.cheap_answer([[0.1, 0.23456, 0.66544], [0.9, 0.05, 0.05]]) == [
        {"label": 2, "confidence": 0.6654, "votes": {"logreg": 2}},
        {"label": 0, "confidence": 0.9, "votes": {"logreg": 0}},
    ]


def test_the_compiled_graph_type_checks_and_makes_the_expensive_arm_lazy() -> None:
    plan = sg.compile(digits_cascade.build_graph())
    assert [stage.name for stage in plan.deployments] == [
        "preprocess", "LogisticRegressionModel", "confident", "cheap_answer", "Cnn",
        "NearestNeighboursModel", "vote"]
    lazy = {node.label for node in plan.nodes if node.lazy}
    assert lazy == {*EXPENSIVE, "cheap_answer"}
    assert plan.nodes[-1].output_type == "list[Prediction]"


def test_tau_is_a_constant_of_the_plan() -> None:
    plan = sg.compile(digits_cascade.build_graph(0.9))
    (node,) = [node for node in plan.nodes if node.label == "confident"]
    assert node.args[1] == {"$const": 0.9}


def test_every_executor_answers_as_the_local_one(pipeline: Any,
                                                cascade: sg.LocalExecutor) -> None:
    """A confident request, an unconfident one, and one mixing both, on every executor."""
    images = digits.load_split().test_images
    payloads = [one_image(0), one_image(12), {"images": images[10:14]}]

    async def locally() -> list[Any]:
        return [await cascade.acall(payload) for payload in payloads]

    expected = asyncio.run(locally())
    assert [pipeline.run(digits_cascade.graph, payload) for payload in payloads] == expected

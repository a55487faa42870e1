"""Digits cascade: the ONNX logistic regression answers alone when it is sure; otherwise the
whole digits ensemble votes.

    with sg.InputNode(DigitsRequest) as inp:
        pixels = preprocess.bind(inp.images)
        logreg = LogisticRegressionModel.bind().predict.bind(pixels)  # shared by both arms
        sure = confident.bind(logreg, tau)                 # every image's top prob >= tau
        cnn = Cnn.bind().predict.bind(pixels)                          # only if escalated
        knn = NearestNeighboursModel.bind().predict.bind(pixels)       # only if escalated
        predictions = sg.when(sure, cheap_answer.bind(logreg),        # logreg alone, or
                              vote.bind(cnn, logreg, knn), name="cascade")   # all three

The stages and models are `servegraph.pipelines.digits`'s, imported, not copied: the same
training split, model cache and `vote`. Only the arm taken runs (`sg.when`), so a confident
request costs a preprocess and a logistic regression of a few microseconds, and an
unconfident one the whole ensemble, whose logistic regression is the node already computed.
Both arms answer `list[Prediction]`; an answer's `votes` name the models that voted, so
`{"logreg": ...}` alone marks an answer the cheap arm gave.

The threshold `TAU` is chosen by `choose_tau` on a validation split: a quarter of digits'
training split, stratified, with digits' seed. The held-out (test) split is never read to
choose it. The smallest `TAU_GRID` value whose cascade accuracy on the validation images is at
most `MAX_VALIDATION_LOSS` (a quarter of a point) below the ensemble's on the same images is
taken.

Honesty about that split: digits trains every model on the whole training split, so the
models have seen the validation images. No image is left that is neither training nor test
data, and choosing a threshold trains nothing new. The logistic regression (C=1 on 64
features) barely overfits: 98.4% on its training images against 96.9% held out, and its top
probability is distributed nearly alike on both (median 0.965 against 0.960), so a threshold
on it transfers roughly. Roughly: in-sample, the models err less, so the rule's figures are
optimistic. On the validation images the cascade at TAU loses nothing against the ensemble;
held out it loses 0.44 points (two of 450 images), inside the issue's 0.5. The held-out gap
that `python -m servegraph.pipelines.digits_cascade` prints is that check.

`python -m servegraph.pipelines.digits_cascade` prints TAU, the rule's validation figures,
and the held-out accuracy of cascade and ensemble and the escalation rate, computed through
both pipelines on the local executor, one image per request.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import servegraph as sg
from servegraph.pipelines import digits
from servegraph.pipelines.digits import (
    CONFIDENCE_DECIMALS,
    Cnn,
    DigitsRequest,
    LogisticRegressionModel,
    NearestNeighboursModel,
    Prediction,
    preprocess,
    vote,
)

VALIDATION_FRACTION = 0.25  # of digits' training split
TAU_GRID = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)
MAX_VALIDATION_LOSS = 0.0025  # accuracy the cascade may give up against the ensemble
TAU = 0.5  # choose_tau()'s answer; a test recomputes it


# --- the stages ------------------------------------------------------------------------------


@sg.deployment(ray_actor_options={"num_cpus": 0.25})
def confident(probabilities: list[list[float]], tau: float) -> bool:
    """Whether the logistic regression may answer alone: every image of the request has a
    top probability of at least `tau` (one unsure image sends the request to the ensemble,
    which answers all its images)."""
    return all(max(image) >= tau for image in probabilities)


@sg.deployment(ray_actor_options={"num_cpus": 0.25})
def cheap_answer(logreg: list[list[float]]) -> list[Prediction]:
    """The logistic regression's own answer, in the ensemble's shape: its label, its
    probability, and itself as the only vote."""
    answers = []
    for image in logreg:
        label = int(np.argmax(image))
        answers.append(Prediction(label=label,
                                  confidence=round(float(image[label]), CONFIDENCE_DECIMALS),
                                  votes={"logreg": label}))
    return answers


def build_graph(tau: float = TAU) -> sg.Graph:
    """The cascade at threshold `tau` (0 never escalates; above 1 always does)."""
    with sg.InputNode(DigitsRequest) as inp:
        pixels = preprocess.bind(inp.images)
        logreg = LogisticRegressionModel.bind().predict.bind(pixels)
        sure = confident.bind(logreg, tau)
        cnn = Cnn.bind().predict.bind(pixels)
        knn = NearestNeighboursModel.bind().predict.bind(pixels)
        predictions = sg.when(sure, cheap_answer.bind(logreg), vote.bind(cnn, logreg, knn),
                              name="cascade")
    return sg.Graph(predictions, name="digits_cascade")


graph = build_graph()


def escalated(prediction: Prediction) -> bool:
    """Whether the ensemble gave this answer (the cheap arm's has one vote, its own)."""
    return set(prediction["votes"]) != {"logreg"}


# --- choosing tau from the models' probabilities ---------------------------------------------


@dataclass(frozen=True)
class Probabilities:
    """Per image: the logistic regression's probabilities and the ensemble's label, from the
    models called directly (no pipeline), so every threshold is scored from these arrays."""

    logreg: np.ndarray          # (images, classes): the stage's floats, exactly
    ensemble_labels: np.ndarray  # (images,), `vote`'s labels

    def cascade_labels(self, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """The cascade's label per image at `tau`, one image per request, and which images
        escalated."""
        escalate = self.logreg.max(axis=1) < tau
        return np.where(escalate, self.ensemble_labels, self.logreg.argmax(axis=1)), escalate


def model_probabilities(images: np.ndarray) -> Probabilities:
    """The three models on scaled images, through the stages' own classes: the same
    numbers the pipeline computes, in one pass per model."""
    pixels = images.tolist()
    logreg = LogisticRegressionModel().predict(pixels)
    knn = NearestNeighboursModel().predict(pixels)
    cnn_stage = Cnn()

    async def cnn_all() -> list[list[float]]:
        chunks = [pixels[start:start + digits.MAX_IMAGES]
                  for start in range(0, len(pixels), digits.MAX_IMAGES)]
        return [row for chunk in chunks for row in (await cnn_stage.predict([chunk]))[0]]

    cnn = asyncio.run(cnn_all())
    labels = [prediction["label"] for prediction in vote(cnn, logreg, knn)]
    return Probabilities(np.asarray(logreg, dtype=np.float64), np.asarray(labels))


@functools.lru_cache(maxsize=1)
def validation_split() -> tuple[np.ndarray, np.ndarray]:
    """A stratified quarter of digits' training split, carved with digits' seed (scaled
    images, labels). The models were trained on these images too: see the module docstring."""
    from sklearn.model_selection import train_test_split

    split = digits.load_split()
    _, images, _, labels = train_test_split(
        split.train_x, split.train_y, test_size=VALIDATION_FRACTION, random_state=digits.SEED,
        stratify=split.train_y)
    return images, labels


@dataclass(frozen=True)
class Choice:
    """The threshold `choose_tau` took, and the validation figures that decided it."""

    tau: float
    ensemble_accuracy: float
    cascade_accuracy: float
    escalation: float
    images: int


def choose_tau(grid: tuple[float, ...] = TAU_GRID) -> Choice:
    """The smallest threshold on `grid` whose cascade accuracy on the validation split is at
    most `MAX_VALIDATION_LOSS` below the ensemble's: the cheapest cascade that keeps the
    ensemble's accuracy there. Falls back to the grid's largest value (most escalations).
    Trains nothing: it reads the cached models' probabilities once."""
    images, labels = validation_split()
    probabilities = model_probabilities(images)
    ensemble_right = int(np.sum(probabilities.ensemble_labels == labels))
    rows = []
    for tau in sorted(grid):
        predicted, escalate = probabilities.cascade_labels(tau)
        right = int(np.sum(predicted == labels))
        row = Choice(tau, ensemble_right / len(labels), right / len(labels),
                     float(np.mean(escalate)), len(labels))
        if ensemble_right - right <= MAX_VALIDATION_LOSS * len(labels):  # counts: no rounding
            return row
        rows.append(row)
    return rows[-1]


# --- held-out accuracy through the pipelines -------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A pipeline's answers to the held-out images, one image per request."""

    accuracy: float
    escalation: float  # the fraction of requests the ensemble answered
    requests: int


async def predict_each(call: Callable[[dict[str, Any]], Awaitable[list[Prediction]]],
                       images: list[list[float]]) -> list[Prediction]:
    """One request per image, all at once (`call`: an executor's or a handle's `acall`)."""
    answers = await asyncio.gather(*(call({"images": [image]}) for image in images))
    return [answer[0] for answer in answers]


def outcome(predictions: list[Prediction], labels: Any) -> Outcome:
    """Accuracy and escalation rate of one answer per image."""
    right = [p["label"] for p in predictions] == np.asarray(labels)
    return Outcome(float(np.mean(right)), float(np.mean([escalated(p) for p in predictions])),
                   len(predictions))


def held_out(cascade: sg.LocalExecutor | None = None,
             ensemble: sg.LocalExecutor | None = None) -> dict[str, Outcome]:
    """The held-out images through both pipelines on the local executor."""
    split = digits.load_split()
    executors = {"cascade": cascade or sg.LocalExecutor(graph),
                 "ensemble": ensemble or sg.LocalExecutor(digits.graph)}

    async def both() -> dict[str, Outcome]:
        return {name: outcome(await predict_each(executor.acall, split.test_images),
                              split.test_y)
                for name, executor in executors.items()}

    return asyncio.run(both())


def main() -> int:
    choice = choose_tau()
    print(f"tau {TAU} (choose_tau: {choice.tau}; on {choice.images} validation images the "
          f"cascade scores {choice.cascade_accuracy:.4f} against the ensemble's "
          f"{choice.ensemble_accuracy:.4f}, escalating {choice.escalation:.1%})")
    results = held_out()
    cascade, ensemble = results["cascade"], results["ensemble"]
    gap = (ensemble.accuracy - cascade.accuracy) * 100
    print(f"held-out, {cascade.requests} images, one per request:")
    print(f"  ensemble  accuracy {ensemble.accuracy:.4f}")
    print(f"  cascade   accuracy {cascade.accuracy:.4f}  ({gap:.2f} points below the "
          f"ensemble), escalated {cascade.escalation:.1%} of requests")
    return 0 if choice.tau == TAU and gap <= 0.5 else 1


if __name__ == "__main__":
    from servegraph.pipelines.digits_cascade import main as package_main

    sys.exit(package_main())

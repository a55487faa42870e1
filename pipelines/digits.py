"""Digits ensemble: three models trained by the project vote on handwritten digits.

    with sg.InputNode(DigitsRequest) as inp:
        pixels = preprocess.bind(inp.images)                 # 0..16 -> 0..1
        cnn = Cnn.bind().predict.bind(pixels)                 # PyTorch, a quarter of a GPU
        logreg = LogisticRegressionModel.bind().predict.bind(pixels)   # ONNX Runtime
        knn = NearestNeighboursModel.bind().predict.bind(pixels)       # ONNX Runtime
        predictions = vote.bind(cnn, logreg, knn)             # fan-in: soft voting

The data is scikit-learn's bundled `load_digits` (1,797 8x8 images, shipped inside the
wheel: nothing is downloaded). A fixed seed splits it 75/25 and trains, at first use, into the
model cache (`servegraph.pipelines.models.cached`): a small CNN (about a second on two
cores), and a logistic regression and a 5-nearest-neighbours classifier, both converted to
ONNX with skl2onnx and run by ONNX Runtime. The CNN is declared a GPU stage
(`num_gpus: 0.25`, so four replicas share a GPU); without CUDA it runs on the CPU, unchanged.

The CNN batches across requests with `sg.batch`, measured in images (`count_images`), so a
forward pass holds at most `MAX_IMAGES` images however the requests divide them.

`python -m servegraph.pipelines.digits` trains (or loads) the models and prints the held-out
accuracy of each model and of the ensemble, computed through the pipeline on the local
executor.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, Field
from typing_extensions import TypedDict  # pydantic reads only this one before Python 3.12

import servegraph as sg
from servegraph.pipelines.models import OnnxModel, TorchModel, cached, fingerprint

if TYPE_CHECKING:
    import torch

SEED = 0
TEST_FRACTION = 0.25
PIXELS = 64  # 8 x 8
MAX_PIXEL = 16.0  # load_digits' intensities are 0..16
CLASSES = 10
MAX_IMAGES = 128  # per request, and per CNN forward pass
CONFIDENCE_DECIMALS = 4
# Bump when a model's recipe changes: the cache files' names carry it.
RECIPE_VERSION = 1

Pixels = Annotated[list[Annotated[float, Field(ge=0, le=MAX_PIXEL)]],
                   Field(min_length=PIXELS, max_length=PIXELS)]


class DigitsRequest(BaseModel):
    """The HTTP body: images as 64 pixel intensities (0..16, row by row), as `load_digits`
    gives them."""

    images: list[Pixels] = Field(min_length=1, max_length=MAX_IMAGES)


class Prediction(TypedDict):
    """One image's answer: the ensemble's label, its mean probability, each model's vote."""

    label: int
    confidence: float
    votes: dict[str, int]


# --- data and training -----------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    train_x: np.ndarray  # float32, scaled to 0..1
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_images: list[list[float]]  # the raw 0..16 pixels, as a client sends them


@functools.lru_cache(maxsize=1)
def load_split() -> Split:
    """load_digits split 75/25, stratified, with the fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train_x, test_x, train_y, test_y = train_test_split(
        digits.data, digits.target, test_size=TEST_FRACTION, random_state=SEED,
        stratify=digits.target)
    return Split(scale(train_x), train_y, scale(test_x), test_y, test_x.tolist())


def scale(images: Any) -> np.ndarray:
    """Pixels 0..16 to float32 0..1, clipped."""
    return np.clip(np.asarray(images, dtype=np.float32) / MAX_PIXEL, 0.0, 1.0)


def _model_file(name: str, suffix: str, build: Callable[[Path], None], *params: Any) -> Path:
    import sklearn

    key = fingerprint(RECIPE_VERSION, name, SEED, TEST_FRACTION, sklearn.__version__, params)
    return cached(f"digits-{name}-{key}{suffix}", build)


def cnn_module() -> torch.nn.Module:
    """Two 3x3 convolutions (8 and 16 channels), one 2x2 pooling, two dense layers:
    18k parameters, logits out."""
    from torch import nn

    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, CLASSES),
    )


CNN_EPOCHS = 15
CNN_BATCH = 64
CNN_LEARNING_RATE = 3e-3


def train_cnn(path: Path) -> None:
    """Adam on the training split, seeded, on one thread (tensors this small only lose to a
    thread pool's overhead, and one thread gives the same weights on every machine): about
    a second."""
    import torch

    split = load_split()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(SEED)
        model = cnn_module()
        optimiser = torch.optim.Adam(model.parameters(), lr=CNN_LEARNING_RATE)
        inputs = torch.from_numpy(split.train_x)
        targets = torch.from_numpy(split.train_y).long()
        order = torch.Generator().manual_seed(SEED)
        model.train()
        for _ in range(CNN_EPOCHS):
            for batch in torch.randperm(len(inputs), generator=order).split(CNN_BATCH):
                optimiser.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
                loss.backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    torch.save(model.state_dict(), path)


def cnn_path() -> Path:
    return _model_file("cnn", ".pt", train_cnn, CNN_EPOCHS, CNN_BATCH, CNN_LEARNING_RATE)


def export_sklearn(estimator: Any, path: Path) -> None:
    """Fit on the training split and convert with skl2onnx: float inputs `pixels`, and the
    class probabilities as a plain tensor (no ZipMap of dicts)."""
    from skl2onnx import to_onnx

    split = load_split()
    estimator.fit(split.train_x, split.train_y)
    onnx_model = to_onnx(estimator, split.train_x[:1], options={"zipmap": False},
                         target_opset=17)
    path.write_bytes(onnx_model.SerializeToString())


def logistic_regression_path() -> Path:
    from sklearn.linear_model import LogisticRegression

    return _model_file("logreg", ".onnx", functools.partial(
        export_sklearn, LogisticRegression(C=1.0, max_iter=2000)), "C=1.0")


def nearest_neighbours_path() -> Path:
    from sklearn.neighbors import KNeighborsClassifier

    return _model_file("knn", ".onnx", functools.partial(
        export_sklearn, KNeighborsClassifier(n_neighbors=5, weights="distance")),
        "k=5,distance")


# --- the stages ------------------------------------------------------------------------------


@sg.deployment(ray_actor_options={"num_cpus": 0.25})
def preprocess(images: list[list[float]]) -> list[list[float]]:
    """Scale 0..16 intensities to the 0..1 the models were trained on."""
    return scale(images).tolist()


def count_images(requests: list[list[list[float]]]) -> int:
    """The CNN's `batch_size_fn`: a batch's size is its images, not its requests."""
    return sum(len(images) for images in requests)


@sg.deployment(ray_actor_options={"num_cpus": 1, "num_gpus": 0.25})
class Cnn:
    """The PyTorch CNN: on the GPU Ray assigns when CUDA can reach it, else the CPU."""

    def __init__(self) -> None:
        import torch

        module = cnn_module()
        module.load_state_dict(torch.load(cnn_path(), weights_only=True))
        self.model = TorchModel(torch.nn.Sequential(module, torch.nn.Softmax(dim=1)))

    @sg.batch(max_batch_size=MAX_IMAGES, batch_wait_timeout_s=0.005,
              batch_size_fn=count_images)
    async def predict(self, requests: list[list[list[float]]]) -> list[list[list[float]]]:
        """Class probabilities for each request's images, all requests in one forward pass."""
        sizes = [len(images) for images in requests]
        stacked = np.asarray([pixel for images in requests for pixel in images],
                             dtype=np.float32).reshape(-1, PIXELS)
        probabilities = await asyncio.to_thread(self.model, stacked)
        bounds = np.cumsum(sizes)[:-1]
        return [part.tolist() for part in np.split(probabilities, bounds)]


class OnnxClassifier:
    """A scikit-learn classifier exported to ONNX: probabilities for a list of images."""

    def __init__(self, path: Path) -> None:
        self.model = OnnxModel(path)

    def predict(self, images: list[list[float]]) -> list[list[float]]:
        inputs = {self.model.input_names[0]: np.asarray(images, dtype=np.float32)}
        _, probabilities = self.model.run(inputs)
        return np.asarray(probabilities, dtype=np.float32).tolist()


@sg.deployment(ray_actor_options={"num_cpus": 0.5})
class LogisticRegressionModel(OnnxClassifier):
    def __init__(self) -> None:
        super().__init__(logistic_regression_path())


@sg.deployment(ray_actor_options={"num_cpus": 0.5})
class NearestNeighboursModel(OnnxClassifier):
    def __init__(self) -> None:
        super().__init__(nearest_neighbours_path())


@sg.deployment(ray_actor_options={"num_cpus": 0.25})
def vote(cnn: list[list[float]], logreg: list[list[float]],
         knn: list[list[float]]) -> list[Prediction]:
    """Soft voting: the mean of the three probability vectors decides; each model's own
    choice is reported beside it."""
    by_model = {"cnn": np.asarray(cnn), "logreg": np.asarray(logreg), "knn": np.asarray(knn)}
    mean = np.mean(list(by_model.values()), axis=0)
    labels = mean.argmax(axis=1)
    votes = {name: probabilities.argmax(axis=1) for name, probabilities in by_model.items()}
    return [Prediction(label=int(label),
                       confidence=round(float(mean[row, label]), CONFIDENCE_DECIMALS),
                       votes={name: int(choice[row]) for name, choice in votes.items()})
            for row, label in enumerate(labels)]


def build_graph() -> sg.Graph:
    with sg.InputNode(DigitsRequest) as inp:
        pixels = preprocess.bind(inp.images)
        cnn = Cnn.bind().predict.bind(pixels)
        logreg = LogisticRegressionModel.bind().predict.bind(pixels)
        knn = NearestNeighboursModel.bind().predict.bind(pixels)
        predictions = vote.bind(cnn, logreg, knn)
    return sg.Graph(predictions, name="digits")


graph = build_graph()


# --- held-out accuracy -------------------------------------------------------------------


def requests_for(images: list[list[float]]) -> list[dict[str, Any]]:
    """Payloads of at most MAX_IMAGES images each."""
    return [{"images": images[start:start + MAX_IMAGES]}
            for start in range(0, len(images), MAX_IMAGES)]


async def predict_all(executor: sg.LocalExecutor, images: list[list[float]]) -> list[Prediction]:
    """Every image through the pipeline, the requests concurrently (the CNN batches them)."""
    answers = await asyncio.gather(*(executor.acall(payload) for payload in requests_for(images)))
    return [prediction for answer in answers for prediction in answer]


def accuracy(predictions: list[Prediction], labels: Any) -> dict[str, float]:
    """Held-out accuracy of the ensemble and of each model's own vote."""
    labels = np.asarray(labels)
    scores = {"ensemble": float(np.mean([p["label"] for p in predictions] == labels))}
    for name in predictions[0]["votes"]:
        scores[name] = float(np.mean([p["votes"][name] for p in predictions] == labels))
    return scores


def held_out_accuracy(executor: sg.LocalExecutor | None = None) -> dict[str, float]:
    split = load_split()
    executor = executor or sg.LocalExecutor(graph)
    return accuracy(asyncio.run(predict_all(executor, split.test_images)), split.test_y)


def main() -> int:
    split = load_split()
    print(f"digits: {len(split.train_y)} training and {len(split.test_y)} held-out images, "
          f"seed {SEED}")
    scores = held_out_accuracy()
    for name, score in scores.items():
        print(f"  {name:<9} {score:.4f}")
    return 0 if scores["ensemble"] >= 0.95 else 1


if __name__ == "__main__":
    from servegraph.pipelines.digits import main as package_main

    sys.exit(package_main())

"""The digits ensemble: held-out accuracy through the pipeline, each stage on literal inputs,
the CNN's cross-request batching, the request model, and the same answers from Ray Serve."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

import servegraph as sg
from servegraph.pipelines import digits

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def executor() -> sg.LocalExecutor:
    """One executor for the module: the stages (and their models) are built once."""
    return sg.LocalExecutor(digits.graph)


def payloads() -> list[dict[str, Any]]:
    images = digits.load_split().test_images
    return [{"images": images[:1]}, {"images": images[1:9]},
            {"images": images[9:9 + digits.MAX_IMAGES]}]


def test_held_out_accuracy(executor: sg.LocalExecutor) -> None:
    scores = digits.held_out_accuracy(executor)
    print(f"held-out accuracy: {scores}")
    assert scores["ensemble"] >= 0.95
    assert all(scores[name] >= 0.93 for name in ("cnn", "logreg", "knn"))
    assert set(scores) == {"ensemble", "cnn", "logreg", "knn"}


def test_the_split_is_fixed() -> None:
    split = digits.load_split()
    assert (len(split.train_y), len(split.test_y)) == (1347, 450)
    assert np.bincount(split.test_y).min() >= 43  # stratified: 43 to 46 of each digit
    assert split.train_x.dtype == np.float32 and split.train_x.max() == 1.0
    assert max(map(max, split.test_images)) == 16.0


def test_models_are_cached_by_recipe() -> None:
    paths = [digits.cnn_path(), digits.logistic_regression_path(),
             digits.nearest_neighbours_path()]
    assert [path.name.split("-")[1] for path in paths] == ["cnn", "logreg", "knn"]
    assert all(path.exists() for path in paths)
    assert digits.cnn_path() == paths[0]


def test_preprocess_scales_to_unit_range() -> None:
    assert digits.preprocess([[0.0, 8.0, 16.0, 20.0]]) == [[0.0, 0.5, 1.0, 1.0]]


def test_vote_is_soft_voting_with_each_models_choice() -> None:
    cnn = [[0.6, 0.4], [0.1, 0.9]]
    logreg = [[0.3, 0.7], [0.2, 0.8]]
    knn = [[0.2, 0.8], [0.0, 1.0]]
    assert digits.vote(cnn, logreg, knn) == [
        {"label": 1, "confidence": 0.6333, "votes": {"cnn": 0, "logreg": 1, "knn": 1}},
        {"label": 1, "confidence": 0.9, "votes": {"cnn": 1, "logreg": 1, "knn": 1}},
    ]


def test_count_images_sizes_a_batch_by_images() -> None:
    assert digits.count_images([[[0.0] * 64] * 3, [[0.0] * 64]]) == 4
    assert digits.count_images([]) == 0


async def test_cnn_batches_requests_into_one_pass_and_splits_them_back() -> None:
    cnn = digits.Cnn()
    images = digits.load_split().test_x[:7].tolist()
    requests = [images[:3], images[3:4], images[4:]]
    batched = await cnn.predict(requests)
    assert [len(part) for part in batched] == [3, 1, 3]
    alone = [await cnn.predict([request]) for request in requests]
    np.testing.assert_allclose(np.concatenate(batched), np.concatenate([a[0] for a in alone]),
                               atol=1e-6)
    assert np.allclose(np.sum(batched[0], axis=1), 1.0, atol=1e-5)


def test_onnx_classifiers_give_probabilities() -> None:
    images = digits.load_split().test_x[:5].tolist()
    for stage in (digits.LogisticRegressionModel(), digits.NearestNeighboursModel()):
        probabilities = np.asarray(stage.predict(images))
        assert probabilities.shape == (5, digits.CLASSES)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("images", "loc", "kind"), [
    ([], ["images"], "too_short"),
    ([[0.0] * 63], ["images", 0], "too_short"),
    ([[0.0] * 63 + [17.0]], ["images", 0, 63], "less_than_equal"),
    ([[0.0] * 64] * (digits.MAX_IMAGES + 1), ["images"], "too_long"),
])
def test_bad_images_are_input_errors(executor: sg.LocalExecutor, images: list[Any],
                                     loc: list[Any], kind: str) -> None:
    with pytest.raises(sg.InputError) as caught:
        executor.call({"images": images})
    assert [(error["loc"], error["type"]) for error in caught.value.errors] == [(loc, kind)]


def test_plan_declares_a_fractional_gpu_cnn_with_image_batches() -> None:
    plan = sg.compile(digits.graph)
    assert [stage.name for stage in plan.deployments] == [
        "preprocess", "Cnn", "LogisticRegressionModel", "NearestNeighboursModel", "vote"]
    cnn = plan.stage("Cnn")
    assert cnn.options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0.25}
    batching = cnn.batching["predict"]
    assert batching.max_batch_size == digits.MAX_IMAGES
    assert batching.batch_size_fn == "servegraph.pipelines.digits:count_images"
    assert plan.input_model == "servegraph.pipelines.digits:DigitsRequest"


def test_every_executor_answers_as_the_local_one(pipeline: Any,
                                                executor: sg.LocalExecutor) -> None:
    """One body on local, local-strict and Ray Serve (servegraph's pytest plugin)."""
    async def locally() -> list[Any]:
        return [await executor.acall(payload) for payload in payloads()]

    expected = asyncio.run(locally())
    assert [pipeline.run(digits.graph, payload) for payload in payloads()] == expected

    async def concurrently() -> list[Any]:  # the CNN batches these across requests
        return list(await asyncio.gather(*(pipeline.arun(digits.graph, payload)
                                           for payload in payloads())))

    assert asyncio.run(concurrently()) == expected
    response = pipeline.http(digits.graph, payloads()[1])
    assert (response.status_code, response.json()) == (200, expected[1])
    with pytest.raises(sg.InputError):
        pipeline.run(digits.graph, {"images": [[1.0] * 10]})


def test_strict_mode_checks_every_edge_and_agrees(executor: sg.LocalExecutor) -> None:
    payload = payloads()[1]
    strict = sg.run_local(digits.graph, payload, strict=True)
    assert strict == executor.call(payload)

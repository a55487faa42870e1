"""The flagship semantic-search pipeline with the real model: relevance and top-k on the local
executor, strict mode, and the same answers from Ray Serve over the handle and over HTTP.

The model loads once per module (~6 s) and every local run shares it through `overrides`; the
served pipeline loads its own copy in the Encoder replica.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from typing import Any

import pytest

import servegraph as sg
from servegraph.pipelines import search
from servegraph.pipelines.search import SAMPLE_CORPUS, SAMPLE_QUERIES

PAYLOADS: list[dict[str, Any]] = [
    {"query": "How do plants make food from light?", "documents": SAMPLE_CORPUS},
    {"query": "What is the tallest mountain on Earth?", "documents": SAMPLE_CORPUS, "top_k": 1},
    {"query": "vehicles powered by batteries", "documents": SAMPLE_CORPUS[8:], "top_k": 5},
    {"query": "Can antibiotics cure a cold?", "documents": SAMPLE_CORPUS[:3], "top_k": 10},
]


@pytest.fixture(scope="module")
def encoder() -> search.Encoder:
    """One loaded model for the module: `Encoder()` reads the packaged weights offline."""
    return search.Encoder()


def run_local(payload: dict[str, Any], encoder: search.Encoder, *, strict: bool = False) -> Any:
    """`sg.run_local` on the module's graph, with the already loaded encoder swapped in (the
    executor would otherwise build a fresh Encoder, and load the model, on every call)."""
    return sg.run_local(search.graph, payload, overrides={search.Encoder: encoder},
                        strict=strict)


def assert_well_formed(hits: list[dict[str, Any]], documents: list[str], top_k: int) -> None:
    assert len(hits) == min(top_k, len(documents))
    assert [hit["rank"] for hit in hits] == list(range(1, len(hits) + 1))
    assert [hit["document"] for hit in hits] == [documents[hit["index"]] for hit in hits]
    assert len({hit["index"] for hit in hits}) == len(hits)
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= score <= 1.0 and round(score, 4) == score for score in scores)


def test_graph_compiles_to_encoder_ranker_and_driver() -> None:
    plan = sg.compile(search.graph)
    assert [stage.name for stage in plan.deployments] == ["Encoder", "Ranker"]
    assert plan.driver.name == "search_driver"
    assert [stage.name for stage in plan.served()] == ["Encoder"]
    assert plan.stage("Ranker").fused_into == "search_driver"
    assert plan.input_model == "servegraph.pipelines.search:SearchRequest"
    encoder_stage = plan.stage("Encoder")
    assert encoder_stage.methods == ["encode"]
    assert encoder_stage.batching["encode"].max_batch_size == 32
    assert encoder_stage.options["max_ongoing_requests"] == 1000
    assert encoder_stage.init_args == []
    assert [node.op for node in plan.nodes if node.stage == "Encoder"] == ["call", "map"]
    summary = search.describe_plan(plan)
    assert summary[1].split()[:2] == ["Encoder", "class"]
    assert "batch(encode)<=32 wait=5ms" in summary[1]
    assert summary[2].split()[:5] == ["Ranker", "class", "fused", "into", "search_driver"]
    other_weights = sg.compile(search.build_graph("/models/minilm")).stage("Encoder")
    assert other_weights.init_args == [{"$const": "/models/minilm"}]


async def test_encoder_stays_a_plain_class(encoder: search.Encoder) -> None:
    vectors = await encoder.encode(["a cat naps in the sun", "a kitten sleeps all day"])
    assert [len(vector) for vector in vectors] == [384, 384]
    assert all(isinstance(value, float) for vector in vectors for value in vector)
    assert all(math.isclose(math.hypot(*vector), 1.0, abs_tol=1e-5) for vector in vectors)
    assert json.loads(json.dumps(vectors)) == vectors
    assert sum(a * b for a, b in zip(*vectors)) > 0.5


@pytest.mark.parametrize(("query", "index"), list(SAMPLE_QUERIES.items()))
def test_sample_query_finds_its_document(query: str, index: int,
                                         encoder: search.Encoder) -> None:
    hits = run_local({"query": query, "documents": SAMPLE_CORPUS}, encoder)
    assert_well_formed(hits, SAMPLE_CORPUS, top_k=3)
    assert hits[0]["index"] == index
    assert hits[0]["document"] == SAMPLE_CORPUS[index]
    assert hits[0]["score"] > hits[1]["score"] + 0.1


def test_top_k_is_respected(encoder: search.Encoder) -> None:
    query = "Where did jazz music come from?"
    by_k = {k: run_local({"query": query, "documents": SAMPLE_CORPUS, "top_k": k}, encoder)
            for k in (1, 5, 100)}
    for k, hits in by_k.items():
        assert_well_formed(hits, SAMPLE_CORPUS, top_k=k)
    assert by_k[1][0]["document"] == "Jazz was born in New Orleans in the early twentieth century."
    assert by_k[5][:1] == by_k[1]
    assert by_k[100][:5] == by_k[5]


def test_strict_mode_checks_every_edge_and_agrees(encoder: search.Encoder) -> None:
    for payload in PAYLOADS:
        assert run_local(payload, encoder, strict=True) == run_local(payload, encoder)


@pytest.mark.parametrize(("payload", "loc", "kind"), [
    ({"documents": SAMPLE_CORPUS}, ["query"], "missing"),
    ({"query": "q", "documents": []}, ["documents"], "too_short"),
    ({"query": "q", "documents": SAMPLE_CORPUS, "top_k": 0}, ["top_k"], "greater_than_equal"),
])
def test_bad_request_is_an_input_error_naming_the_field(
        payload: dict[str, Any], loc: list[str], kind: str, encoder: search.Encoder) -> None:
    with pytest.raises(sg.InputError) as caught:
        run_local(payload, encoder)
    assert [(error["loc"], error["type"]) for error in caught.value.errors] == [(loc, kind)]


def test_ranker_is_cosine_top_k_with_ties_to_the_lower_index() -> None:
    documents = ["east", "north", "north again", "north-east"]
    docs = [[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 1.0]]
    hits = search.Ranker().rank([0.0, 0.5], docs, documents, 3)
    assert hits == [
        {"rank": 1, "index": 1, "document": "north", "score": 1.0},
        {"rank": 2, "index": 2, "document": "north again", "score": 1.0},
        {"rank": 3, "index": 3, "document": "north-east", "score": 0.7071},
    ]
    with pytest.raises(ValueError, match="2 embeddings for 1 documents"):
        search.Ranker().rank([1.0, 0.0], docs[:2], documents[:1], 1)


@pytest.mark.ray
def test_served_pipeline_answers_as_the_local_one(deploy: Callable[..., Any],
                                                  encoder: search.Encoder) -> None:
    import httpx

    handle = deploy(search.graph, name="search_pipeline",
                    route_prefix="/search-pipeline")
    expected = [run_local(payload, encoder) for payload in PAYLOADS]
    assert [handle.call(payload) for payload in PAYLOADS] == expected

    async def concurrently() -> list[Any]:
        return list(await asyncio.gather(*(handle.acall(payload) for payload in PAYLOADS)))

    assert asyncio.run(concurrently()) == expected
    with pytest.raises(sg.InputError, match=r"SearchRequest: missing query$"):
        handle.call({"documents": SAMPLE_CORPUS})

    with httpx.Client(timeout=60) as client:
        assert [client.post(handle.url, json=payload).json() for payload in PAYLOADS] == expected
        bad = client.post(handle.url, json={"documents": SAMPLE_CORPUS},
                          headers={"x-request-id": "search-422"})
        assert bad.status_code == 422
        assert bad.headers["x-request-id"] == "search-422"
        body = bad.json()
        assert body["stage"] is None
        assert body["request_id"] == "search-422"
        assert [(error["loc"], error["type"]) for error in body["errors"]] == [
            (["query"], "missing")]
        again = client.post(handle.url, json=PAYLOADS[0])
        assert again.status_code == 200
        assert again.json() == expected[0]

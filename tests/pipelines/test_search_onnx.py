"""Semantic search on ONNX Runtime: the exported encoder agrees with the PyTorch one, the
ONNX pipeline ranks as the PyTorch pipeline does, its batches are sized in padded token
blocks, and Ray Serve answers as the local executor does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import servegraph as sg
from servegraph.pipelines import search
from servegraph.pipelines.search import SAMPLE_CORPUS, SAMPLE_QUERIES

pytest.importorskip("onnxruntime")

SENTENCES = [*SAMPLE_CORPUS, *SAMPLE_QUERIES, "a", "Ünïcödé naïve café — ok?",
             " ".join(["a much longer text that the tokenizer has to cut"] * 40)]
PAYLOADS: list[dict[str, Any]] = [
    {"query": "How do plants make food from light?", "documents": SAMPLE_CORPUS},
    {"query": "What is the tallest mountain on Earth?", "documents": SAMPLE_CORPUS, "top_k": 1},
    {"query": "vehicles powered by batteries", "documents": SAMPLE_CORPUS[8:], "top_k": 5},
]


@pytest.fixture(scope="module")
def onnx_encoder() -> search.OnnxEncoder:
    return search.OnnxEncoder()


@pytest.fixture(scope="module")
def torch_encoder() -> search.Encoder:
    return search.Encoder()


def test_the_two_encoders_agree(onnx_encoder: search.OnnxEncoder,
                                torch_encoder: search.Encoder) -> None:
    from_onnx = np.asarray(asyncio.run(onnx_encoder.encode(SENTENCES)))
    from_torch = np.asarray(asyncio.run(torch_encoder.encode(SENTENCES)))
    assert from_onnx.shape == from_torch.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(from_onnx, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(from_onnx * from_torch, axis=1)
    assert cosines.min() >= 0.999, cosines
    assert np.abs(from_onnx - from_torch).max() < 1e-4


async def test_batching_does_not_change_an_embedding(onnx_encoder: search.OnnxEncoder) -> None:
    together = np.asarray(await onnx_encoder.encode(SENTENCES))
    alone = np.asarray([await onnx_encoder.embed(text) for text in SENTENCES])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_the_export_is_cached(onnx_encoder: search.OnnxEncoder) -> None:
    path = search.onnx_model_path()
    assert path == onnx_encoder.model.path
    assert path.name.startswith("minilm-") and path.suffix == ".onnx"
    assert onnx_encoder.model.providers == ["CPUExecutionProvider"] or \
        onnx_encoder.model.providers[0] == "CUDAExecutionProvider"


def test_padded_blocks_sizes_a_batch_by_its_padded_tensor() -> None:
    short = "a short sentence"
    long = " ".join(["word"] * 100)  # 102 tokens with [CLS] and [SEP]
    huge = " ".join(["word"] * 1000)  # cut at max_seq_length, 256 tokens
    assert search.token_count(short) == 5
    assert search.token_count(long) == 102
    assert search.token_count(huge) == 256
    assert search.padded_blocks([]) == 0
    assert search.padded_blocks([short]) == 1
    assert search.padded_blocks([short] * 32) == search.MAX_BATCH_BLOCKS
    assert search.padded_blocks([short, long]) == 4  # two rows, each padded to two blocks
    assert search.padded_blocks([huge]) == 4  # one text never exceeds a batch
    assert search.padded_blocks([short] * 7 + [huge]) == search.MAX_BATCH_BLOCKS


def run_local(graph: sg.Graph, payload: dict[str, Any], encoder: Any) -> Any:
    stage = search.OnnxEncoder if graph is search.onnx_graph else search.Encoder
    return sg.run_local(graph, payload, overrides={stage: encoder})


@pytest.mark.parametrize(("query", "index"), list(SAMPLE_QUERIES.items()))
def test_onnx_search_ranks_as_the_pytorch_one(query: str, index: int,
                                              onnx_encoder: search.OnnxEncoder,
                                              torch_encoder: search.Encoder) -> None:
    payload = {"query": query, "documents": SAMPLE_CORPUS, "top_k": 5}
    from_onnx = run_local(search.onnx_graph, payload, onnx_encoder)
    from_torch = run_local(search.graph, payload, torch_encoder)
    assert [hit["index"] for hit in from_onnx] == [hit["index"] for hit in from_torch]
    assert from_onnx[0]["index"] == index
    for ours, theirs in zip(from_onnx, from_torch):
        assert abs(ours["score"] - theirs["score"]) <= 2e-4


def test_onnx_graph_plan() -> None:
    plan = sg.compile(search.onnx_graph)
    assert plan.name == "search_onnx"
    assert [stage.name for stage in plan.deployments] == ["OnnxEncoder", "Ranker"]
    batching = plan.stage("OnnxEncoder").batching["encode"]
    assert batching.max_batch_size == search.MAX_BATCH_BLOCKS
    assert batching.batch_size_fn == "servegraph.pipelines.search:padded_blocks"
    assert plan.stage("OnnxEncoder").options["max_ongoing_requests"] == 1000
    assert sg.compile(search.build_graph(encoder="torch")).name == "search"
    all_fused = sg.compile(search.build_graph(encoder="onnx", fuse=True))
    assert [stage.name for stage in all_fused.served()] == []
    assert [stage.name for stage in all_fused.fused()] == ["OnnxEncoder", "Ranker"]


@pytest.mark.ray
def test_served_onnx_search_answers_as_the_local_one(
        deploy: Callable[..., Any], onnx_encoder: search.OnnxEncoder) -> None:
    import httpx

    handle = deploy(search.onnx_graph, name="search_onnx", route_prefix="/search-onnx")
    expected = [run_local(search.onnx_graph, payload, onnx_encoder) for payload in PAYLOADS]
    assert [handle.call(payload) for payload in PAYLOADS] == expected

    async def concurrently() -> list[Any]:
        return list(await asyncio.gather(*(handle.acall(payload) for payload in PAYLOADS)))

    assert asyncio.run(concurrently()) == expected
    with httpx.Client(timeout=60) as client:
        assert [client.post(handle.url, json=payload).json() for payload in PAYLOADS] == expected

"""The flagship (semantic search on the ONNX encoder) for the fusion benchmark, once per
contender: servegraph's graph, a hand-written Serve composition and a hand-fused deployment.

All three run the very same objects: `OnnxEncoder._embed` (tokenizer plus one ONNX Runtime
pass, one intra-op thread per replica CPU) batched with the same settings (`serve.batch`, 32
padded 64-token blocks, 5 ms), and `Ranker.rank`. A request is a query and the 16 sample
documents: 17 texts to embed, then one ranking. Like `diamond.py`, this is a module of its
own so that Serve replicas can import the classes by name.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

import servegraph as sg
from servegraph.pipelines import search

QUERIES = list(search.SAMPLE_QUERIES)
BATCH = {"max_batch_size": search.MAX_BATCH_BLOCKS, "batch_wait_timeout_s": 0.005,
         "batch_size_fn": search.padded_blocks}


def encoder_options() -> dict[str, Any]:
    """The compiled OnnxEncoder's Serve options (request limit, CPUs), for the hand-written
    encoder alike."""
    options = sg.compile(search.onnx_graph).stage("OnnxEncoder").options
    return {key: value for key, value in options.items() if key != "name"}


def request(x: int) -> dict[str, Any]:
    """Request number x: one of the sample queries against the sample corpus."""
    return {"query": QUERIES[x % len(QUERIES)], "documents": search.SAMPLE_CORPUS, "top_k": 3}


def check(contender: str, x: int, result: Any) -> None:
    """The best hit must be the document the query is about (the tests hold the model to it)."""
    query = QUERIES[x % len(QUERIES)]
    want = search.SAMPLE_QUERIES[query]
    if not result or result[0]["index"] != want:
        raise AssertionError(f"{contender}: {query!r} ranked {result!r} first, not [{want}]")


def graph(fuse_encoder: bool = False) -> sg.Graph:
    """The flagship as users write it; `fuse_encoder` asks for the encoder in the driver too
    (`fuse=True`), so the whole pipeline is one deployment, as the hand-fused one is."""
    return search.build_graph(encoder="onnx", fuse=True) if fuse_encoder else search.onnx_graph


class HandEncoder:
    """The encoder as a Serve user writes it: the model, and `serve.batch` on its method."""

    def __init__(self) -> None:
        self._encoder = search.OnnxEncoder()

    @serve.batch(**BATCH)
    async def encode(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._encoder._embed, texts)


class HandIngress:
    """The best hand-written composition: every text's call started at once, the query's
    response passed unawaited to the ranker (Serve resolves a top-level argument), the
    documents' gathered here (Serve does not resolve responses inside a list)."""

    def __init__(self, encoder: DeploymentHandle, ranker: DeploymentHandle) -> None:
        self._encoder = encoder
        self._ranker = ranker

    async def run(self, request: dict[str, Any]) -> list[search.Hit]:
        query = self._encoder.encode.remote(request["query"])
        docs = await asyncio.gather(*(self._encoder.encode.remote(text)
                                      for text in request["documents"]))
        return await self._ranker.rank.remote(query, list(docs), request["documents"],
                                              request["top_k"])


def hand_app() -> Any:
    encoder = serve.deployment(HandEncoder, name="encoder").options(**encoder_options()).bind()
    ranker = serve.deployment(search.Ranker, name="ranker").options(
        max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0.5}).bind()
    return serve.deployment(HandIngress, name="ingress").options(
        max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0}).bind(encoder, ranker)


class HandFused:
    """The same work hand-fused into one deployment: the batched encoder and the ranker
    in-process, every text's call started at once into its one `serve.batch` queue."""

    def __init__(self) -> None:
        self._encoder = HandEncoder()
        self._ranker = search.Ranker()

    async def run(self, request: dict[str, Any]) -> list[search.Hit]:
        encode = self._encoder.encode
        query, *docs = await asyncio.gather(
            encode(request["query"]), *(encode(text) for text in request["documents"]))
        return self._ranker.rank(query, docs, request["documents"], request["top_k"])


def hand_fused_app() -> Any:
    return serve.deployment(HandFused, name="hand-fused").options(
        max_ongoing_requests=1000, ray_actor_options={"num_cpus": 1}).bind()

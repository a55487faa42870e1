"""GPU pipelines for the packing and deployment-artifact tests.

Stages ask for GPUs by memory (`gpu_memory`: the compiler derives the fraction, so these need a
cluster spec) or by share (`num_gpus`), with CPU stages around them. The graphs are module
variables, so a Serve config finds and imports them (`tests.gpu_graphs:rag`).
"""

from __future__ import annotations

import servegraph as sg


@sg.deployment(num_replicas=2)
def tokenize(text: str) -> list[str]:
    return text.split()


@sg.deployment(ray_actor_options={"num_cpus": 2}, num_replicas=3)
def top_hits(scores: list[float]) -> list[float]:
    return scores[:3]


@sg.deployment(autoscaling_config={"min_replicas": 1, "max_replicas": 8})
def join(words: list[str]) -> str:
    return " ".join(words)


@sg.deployment(gpu_memory="10GiB", num_replicas=2)
class Embedder:
    """10 GiB of a GPU: 0.42 of a 24 GiB GPU."""

    def embed(self, tokens: list[str]) -> list[float]:
        return [float(len(token)) for token in tokens]


@sg.deployment(gpu_memory="10GiB",
               autoscaling_config={"min_replicas": 1, "initial_replicas": 2, "max_replicas": 6})
class ScaledEmbedder:
    """Embedder that Serve scales from 2 replicas up to 6."""

    def embed(self, tokens: list[str]) -> list[float]:
        return [float(len(token)) for token in tokens]


@sg.deployment(num_replicas="auto", autoscaling_config={"target_ongoing_requests": 2},
               gpu_memory="20GiB")
class AutoEmbedder:
    """Serve scales it from 1 replica up to 100, its default for num_replicas="auto" (the
    user's keys laid over `AutoscalingConfig.default()`); 0.25 of an 80 GiB GPU."""

    def embed(self, tokens: list[str]) -> list[float]:
        return [float(len(token)) for token in tokens]


@sg.deployment(ray_actor_options={"num_gpus": 1}, num_replicas=2)
class Reranker:
    """A whole GPU per replica."""

    def rerank(self, scores: list[float]) -> list[float]:
        return sorted(scores, reverse=True)


@sg.deployment(ray_actor_options={"num_gpus": 0.5, "num_cpus": 1}, num_replicas=3)
class Captioner:
    """Half a GPU per replica, declared."""

    def caption(self, text: str) -> list[float]:
        return [float(ord(char)) for char in text]


@sg.deployment(ray_actor_options={"num_gpus": 2, "num_cpus": 4})
class Generator:
    """A model split over two whole GPUs."""

    def generate(self, scores: list[float]) -> str:
        return ",".join(f"{score:g}" for score in scores)


@sg.deployment(ray_actor_options={"num_gpus": 2},
               autoscaling_config={"min_replicas": 1, "max_replicas": 5})
def wide(tokens: list[str]) -> list[str]:
    """Two whole GPUs a replica, scaled by Serve from 1 to 5."""
    return tokens


@sg.deployment(ray_actor_options={"num_gpus": 0.2},
               autoscaling_config={"min_replicas": 1, "initial_replicas": 2, "max_replicas": 5})
def slim(tokens: list[str]) -> int:
    """A fifth of a GPU a replica, scaled by Serve from 2 to 5."""
    return len(tokens)


def _rag() -> sg.Graph:
    """tokenize -> embed (by gpu_memory) -> rerank (1 GPU) -> top_hits."""
    with sg.InputNode() as inp:
        vector = Embedder.bind().embed.bind(tokenize.bind(inp.text))
        hits = top_hits.bind(Reranker.bind().rerank.bind(vector))
    return sg.Graph(hits, name="rag_search")


def _scaled() -> sg.Graph:
    """An autoscaled GPU stage and an autoscaled CPU stage."""
    with sg.InputNode() as inp:
        words = tokenize.bind(join.bind(inp.words))
        scores = Reranker.bind().rerank.bind(ScaledEmbedder.bind().embed.bind(words))
    return sg.Graph(scores, name="scaled")


def _auto() -> sg.Graph:
    """tokenize -> an autoscaled GPU stage left to Serve's defaults."""
    with sg.InputNode() as inp:
        vector = AutoEmbedder.bind().embed.bind(tokenize.bind(inp.text))
    return sg.Graph(vector, name="auto")


def _caption() -> sg.Graph:
    """Declared GPU shares only (0.5, 1 and 2 GPUs): compiles without a cluster spec."""
    with sg.InputNode() as inp:
        scores = Reranker.bind().rerank.bind(Captioner.bind().caption.bind(inp.text))
        text = Generator.bind().generate.bind(scores)
    return sg.Graph(text, name="caption")


def _embed() -> sg.Graph:
    """tokenize -> embed: one GPU stage whose two replicas share a GPU of 24 GiB."""
    with sg.InputNode() as inp:
        vector = Embedder.bind().embed.bind(tokenize.bind(inp.text))
    return sg.Graph(vector, name="embed")


def _spread() -> sg.Graph:
    """Two autoscaled GPU stages, one of two whole GPUs, one of a fifth."""
    with sg.InputNode() as inp:
        count = slim.bind(wide.bind(tokenize.bind(inp.text)))
    return sg.Graph(count, name="spread")


def _words() -> sg.Graph:
    """CPU stages only."""
    with sg.InputNode() as inp:
        text = join.bind(tokenize.bind(inp.text))
    return sg.Graph(text, name="words")


rag = _rag()
scaled = _scaled()
auto = _auto()
caption = _caption()
words = _words()
embed = _embed()
spread = _spread()

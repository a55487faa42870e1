"""Batched stages whose batches hold bad items (importable, so Serve replicas load them): the
load mix of the batching issue, where one review in three is empty and the embedder raises on
an empty text, failing the whole batch it rides in."""

from __future__ import annotations

import servegraph as sg


@sg.deployment
class ReviewEmbedder:
    """A stand-in for a text model: raises on any empty text in its batch, as a real one
    would. Each vector ends with the size of the batch that computed it, so a test sees that
    batches really formed."""

    @sg.batch(max_batch_size=6, batch_wait_timeout_s=0.2)
    async def embed(self, texts: list[str]) -> list[list[float]]:
        if any(not text for text in texts):
            raise ValueError("cannot embed an empty text")
        return [[float(len(text)), float(len(texts))] for text in texts]


def reviews() -> sg.Graph:
    """A review's title and body go through one batch queue (two call nodes, one method)."""
    with sg.InputNode() as inp:
        embedder = ReviewEmbedder.bind()
        title = embedder.embed.bind(inp.title)
        body = embedder.embed.bind(inp.body)
    return sg.Graph({"title": title, "body": body}, name="reviews")


# The load mix: thirty reviews, one in three with an empty body.
REVIEWS = [{"title": f"review {i}", "body": "" if i % 3 == 0 else "good " * (i % 4 + 1)}
           for i in range(30)]


def is_bad(review: dict[str, str]) -> bool:
    return not review["body"]


@sg.deployment
class Halver:
    """Fails single items on purpose: a negative number's place in the result holds the
    exception its caller gets; the others are answered."""

    @sg.batch(max_batch_size=8, batch_wait_timeout_s=0.2)
    async def halve(self, numbers: list[int]) -> list[dict[str, float]]:
        return [ValueError(f"cannot halve {n}: negative") if n < 0  # type: ignore[misc]
                else {"half": n / 2, "batch": len(numbers)} for n in numbers]


def halves() -> sg.Graph:
    with sg.InputNode() as inp:
        out = Halver.bind().halve.bind(inp.n)
    return sg.Graph(out, name="halves")

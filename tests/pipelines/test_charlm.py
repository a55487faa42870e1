"""The character-level language model and its two stages, called directly (no executor): it
trains on the Zen of Python, continues a prompt from it, samples reproducibly for a seed, the
generator streams one character per chunk, and the filter transforms a stream chunk by chunk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from servegraph.pipelines import charlm

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def generator() -> charlm.Generator:
    return charlm.Generator()


def continuation(prompt: str, length: int) -> str:
    """What follows the first occurrence of `prompt` in the Zen."""
    text = charlm.training_text()
    start = text.index(prompt) + len(prompt)
    return text[start:start + length]


async def collect(chunks: AsyncIterator[str]) -> list[str]:
    return [chunk async for chunk in chunks]


def test_the_training_text_is_the_zen_read_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    text = charlm.training_text()
    assert text.startswith("The Zen of Python, by Tim Peters\n\nBeautiful is better than ugly.")
    assert text.endswith("Namespaces are one honking great idea -- let's do more of those!\n")
    assert capsys.readouterr().out == ""


def test_it_trains_into_the_cache_and_learns_the_text_by_heart() -> None:
    path = charlm.model_path()
    assert path.exists() and path.name.startswith("charlm-") and path.suffix == ".pt"
    assert charlm.model_path() == path
    for prompt, length in [("Beautiful is ", 64), ("Errors", 35), ("Now is", 18)]:
        assert charlm.complete(prompt, length) == continuation(prompt, length)
    assert continuation("Now is", 18) == " better than never"


def test_the_text_is_cyclic() -> None:
    ending = "Namespaces are one honking great idea -- let's do more of those!\n"
    assert charlm.complete(ending, 16) == "The Zen of Pytho"


def test_sampling_is_reproducible_for_a_seed() -> None:
    first = charlm.complete("Simple", 120, temperature=1.5, seed=7)
    assert charlm.complete("Simple", 120, temperature=1.5, seed=7) == first
    others = {charlm.complete("Simple", 120, temperature=1.5, seed=seed) for seed in range(4)}
    assert len(others) == 4
    assert set(first) <= set(charlm.shared_model().vocab)


def test_unknown_prompt_characters_are_padding() -> None:
    model = charlm.shared_model()
    assert model.encode("Zen€") == [model.ids["Z"], model.ids["e"], model.ids["n"], model.pad]
    assert len(charlm.complete("€€€ λ", 20)) == 20


def test_next_index_greedy_and_seeded() -> None:
    logits = np.array([0.0, 3.0, 1.0])
    assert charlm.next_index(logits, 0.0, np.random.default_rng(0)) == 1
    draws = [charlm.next_index(logits, 1.0, np.random.default_rng(5)) for _ in range(3)]
    assert len(set(draws)) == 1
    many = [charlm.next_index(logits, 100.0, rng) for rng in [np.random.default_rng(1)] * 300]
    assert set(many) == {0, 1, 2}  # a high temperature flattens the distribution


async def test_generator_streams_one_character_per_chunk(generator: charlm.Generator) -> None:
    stream = generator.generate("Beautiful is ", 40)
    first = await anext(stream)
    assert first == "b"
    rest = await collect(stream)
    assert [first, *rest] == list(charlm.complete("Beautiful is ", 40))
    sampled = await collect(generator.generate("Flat", 50, temperature=0.7, seed=3))
    assert "".join(sampled) == charlm.complete("Flat", 50, temperature=0.7, seed=3)


async def test_concurrent_streams_interleave(generator: charlm.Generator) -> None:
    order: list[str] = []

    async def read(name: str, prompt: str) -> str:
        text = ""
        async for chunk in generator.generate(prompt, 5):
            order.append(name)
            text += chunk
        return text

    texts = await asyncio.gather(read("a", "Beautiful is "), read("b", "Now is"))
    assert texts == ["bette", " bett"]
    assert order[:4] == ["a", "b", "a", "b"]


@pytest.mark.parametrize(("chunk", "upper", "expected"), [
    ("better", True, "BETTER"),
    ("a\x00b\x1bc\u200bd", True, "ABCD"),  # control and format characters go
    ("line\n\tnext", False, "line\n\tnext"),
    ("\x07", True, ""),
    ("ß", True, "SS"),
])
def test_clean(chunk: str, upper: bool, expected: str) -> None:
    assert charlm.clean(chunk, upper) == expected


async def test_filter_transforms_each_chunk_as_it_arrives() -> None:
    events: list[str] = []

    async def source() -> AsyncIterator[str]:
        for chunk in ["ab", "\x00", "c\x1b", "\n", "d"]:
            events.append(f"produced {chunk!r}")
            yield chunk

    async for out in charlm.Filter().apply(source()):
        events.append(f"filtered {out!r}")
    assert events == [
        "produced 'ab'", "filtered 'AB'",
        "produced '\\x00'",  # nothing left of it: nothing yielded
        "produced 'c\\x1b'", "filtered 'C'",
        "produced '\\n'", "filtered '\\n'",
        "produced 'd'", "filtered 'D'",
    ]
    assert await collect(charlm.Filter(upper=False).apply(source())) == ["ab", "c", "\n", "d"]


async def test_generator_into_filter(generator: charlm.Generator) -> None:
    chunks = await collect(charlm.Filter().apply(generator.generate("Beautiful is ", 30)))
    assert "".join(chunks) == continuation("Beautiful is ", 30).upper()
    assert all(len(chunk) == 1 for chunk in chunks)


def test_graph_compiles_with_the_request_model() -> None:
    import servegraph as sg

    plan = sg.compile(charlm.graph)
    assert [stage.name for stage in plan.deployments] == ["Generator", "Filter"]
    assert plan.input_model == "servegraph.pipelines.charlm:GenerateRequest"
    request = charlm.GenerateRequest(prompt="Now is")
    assert (request.max_tokens, request.temperature, request.seed) == (200, 0.0, 0)


# --- the pipeline on both executors ----------------------------------------------------------

REQUEST = {"prompt": "Beautiful is ", "max_tokens": 40}
EXPECTED = continuation("Beautiful is ", 40).upper()


def test_the_pipeline_streams_locally_chunk_by_chunk() -> None:
    import servegraph as sg

    chunks = sg.run_local(charlm.graph, REQUEST)
    assert chunks == list(EXPECTED)  # one character per chunk
    streamed = list(sg.LocalExecutor(charlm.graph).stream(REQUEST))
    assert streamed == chunks


def test_every_executor_gives_the_same_characters(pipeline: Any) -> None:
    """One body on local, local-strict (every chunk checked) and Ray Serve."""
    assert pipeline.run(charlm.graph, REQUEST) == list(EXPECTED)
    response = pipeline.http(charlm.graph, REQUEST)
    assert (response.status_code, response.text) == (200, EXPECTED)


@pytest.mark.ray
def test_the_served_pipeline_streams_what_the_local_one_does(deploy: Any) -> None:
    import httpx

    import servegraph as sg

    local = sg.run_local(charlm.graph, REQUEST)
    handle = deploy(charlm.graph, name="charlm", route_prefix="/charlm")
    assert handle.call(REQUEST) == local
    assert list(handle.stream(REQUEST)) == local  # Generator -> Filter, replica to replica
    with httpx.stream("POST", handle.url, json=REQUEST, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert "".join(response.iter_text()) == EXPECTED
    bad = httpx.post(handle.url, json={"prompt": "x", "max_tokens": 0}, timeout=60)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"] == ["max_tokens"]

"""Streaming generation: a character-level language model that streams its text one
character at a time, into a stage that transforms the stream as it flows.

    with sg.InputNode(GenerateRequest) as inp:
        chunks = Generator.bind().generate.bind(inp.prompt, inp.max_tokens,
                                                inp.temperature, inp.seed)  # async generator
        text = Filter.bind().apply.bind(chunks)        # consumes the stream chunk by chunk

The model is trained by the project, at first use, into the model cache: a fixed-window
neural character model (the previous 32 characters, embedded, through one hidden layer, to the
next character's logits), fit in a few seconds on one thread to the Zen of Python, the text
that Python's own `this` module ships (so nothing is downloaded, and every machine trains on
the same 856 characters). It learns the text by heart, so a prompt from it continues it:
"Beautiful is " gives "better than ugly." and so on, round and round. Training hides a random
part of each window, so short prompts work too. The training text is cyclic: after the last
line comes the first again.

Sampling is reproducible: `temperature=0` is greedy, and a positive temperature draws from a
numpy generator seeded by the request's `seed`.

`complete()` is the same generation without the stages or an event loop.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import io
import unicodedata
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

import servegraph as sg
from servegraph.pipelines.models import TorchModel, cached, fingerprint

if TYPE_CHECKING:
    import torch

CONTEXT = 32
EMBEDDING = 16
HIDDEN = 256
STEPS = 600
BATCH = 256
LEARNING_RATE = 3e-3
SEED = 0
# Bump when the recipe changes: the cache file's name carries it.
RECIPE_VERSION = 1


def training_text() -> str:
    """The Zen of Python, decoded from the `this` module (which prints it when first imported,
    so the import is kept quiet)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13") + "\n"


class CharModel:
    """The trained network with its vocabulary: ids for characters (id `len(vocab)` pads the
    window and stands for a character the text never uses) and next-character sampling."""

    def __init__(self, vocab: str, network: torch.nn.Module) -> None:
        self.vocab = vocab
        self.ids = {char: index for index, char in enumerate(vocab)}
        self.pad = len(vocab)
        self.network = TorchModel(network)

    @classmethod
    def load(cls) -> CharModel:
        import torch

        saved = torch.load(model_path(), weights_only=True)
        network = char_network(len(saved["vocab"]))
        network.load_state_dict(saved["state"])
        return cls(saved["vocab"], network)

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(char, self.pad) for char in text]

    def characters(self, prompt: str, temperature: float = 0.0, seed: int = 0
                   ) -> Iterator[str]:
        """The continuation of `prompt`, one character per step, without end."""
        window = [self.pad] * CONTEXT + self.encode(prompt)
        rng = np.random.default_rng(seed)
        while True:
            logits = self.network(np.asarray([window[-CONTEXT:]], dtype=np.int64))[0]
            index = next_index(logits.astype(np.float64), temperature, rng)
            window.append(index)
            yield self.vocab[index]


def next_index(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0, else a draw from softmax(logits / temperature)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits / temperature
    weights = np.exp(scaled - scaled.max())
    return int(rng.choice(len(weights), p=weights / weights.sum()))


def char_network(vocab_size: int) -> torch.nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Embedding(vocab_size + 1, EMBEDDING), nn.Flatten(),
        nn.Linear(CONTEXT * EMBEDDING, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, vocab_size),
    )


def train(path: Path) -> None:
    """Adam on every window of the cyclic text, a random prefix of each window hidden behind
    the padding id; seeded, on one thread (tiny tensors; the same weights everywhere)."""
    import torch

    text = training_text()
    vocab = "".join(sorted(set(text)))
    ids = torch.tensor([vocab.index(char) for char in text])
    cyclic = torch.cat([ids[-CONTEXT:], ids])
    windows = cyclic.unfold(0, CONTEXT, 1)[:-1]  # windows[i] precedes ids[i]
    positions = torch.arange(CONTEXT).unsqueeze(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(SEED)
        generator = torch.Generator().manual_seed(SEED)
        network = char_network(len(vocab))
        optimiser = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
        for _ in range(STEPS):
            rows = torch.randint(0, len(windows), (BATCH,), generator=generator)
            inputs = windows[rows].clone()
            kept = torch.randint(1, CONTEXT + 1, (BATCH, 1), generator=generator)
            inputs[positions < CONTEXT - kept] = len(vocab)
            loss = torch.nn.functional.cross_entropy(network(inputs), ids[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    torch.save({"vocab": vocab, "state": network.state_dict()}, path)


def model_path() -> Path:
    key = fingerprint(RECIPE_VERSION, training_text(), CONTEXT, EMBEDDING, HIDDEN, STEPS, BATCH,
                      LEARNING_RATE, SEED)
    return cached(f"charlm-{key}.pt", train)


@functools.lru_cache(maxsize=1)
def shared_model() -> CharModel:
    """One loaded model per process, for `complete` and tests."""
    return CharModel.load()


def complete(prompt: str, max_tokens: int, temperature: float = 0.0, seed: int = 0) -> str:
    """The first `max_tokens` characters of the continuation, without stages or a loop."""
    characters = shared_model().characters(prompt, temperature, seed)
    return "".join(next(characters) for _ in range(max_tokens))


# --- the stages ------------------------------------------------------------------------------


class GenerateRequest(BaseModel):
    prompt: str = Field(default="", max_length=4096)
    max_tokens: int = Field(default=200, ge=1, le=10_000)
    temperature: float = Field(default=0.0, ge=0.0, le=10.0)
    seed: int = 0


@sg.deployment(ray_actor_options={"num_cpus": 1})
class Generator:
    """Streams the continuation of a prompt, one character per chunk.

    `token_interval_s` paces the stream (as a larger model's per-token time would); at 0 the
    generator still hands the event loop back after every character, so concurrent requests
    interleave and a consumer sees each chunk as it is produced."""

    def __init__(self, token_interval_s: float = 0.0) -> None:
        self.model = CharModel.load()
        self.token_interval_s = token_interval_s

    async def generate(self, prompt: str, max_tokens: int, temperature: float = 0.0,
                       seed: int = 0) -> AsyncIterator[str]:
        characters = self.model.characters(prompt, temperature, seed)
        for _ in range(max_tokens):
            yield next(characters)
            await asyncio.sleep(self.token_interval_s)


def clean(chunk: str, upper: bool) -> str:
    """Control and format characters removed (newlines and tabs kept), optionally uppercased."""
    kept = "".join(char for char in chunk
                   if char in "\n\t" or unicodedata.category(char)[0] != "C")
    return kept.upper() if upper else kept


@sg.deployment(ray_actor_options={"num_cpus": 0.25})
class Filter:
    """Transforms a stream chunk by chunk as it arrives: never waits for the whole text."""

    def __init__(self, upper: bool = True) -> None:
        self.upper = upper

    async def apply(self, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        async for chunk in chunks:
            cleaned = clean(chunk, self.upper)
            if cleaned:
                yield cleaned


def build_graph(upper: bool = True) -> sg.Graph:
    with sg.InputNode(GenerateRequest) as inp:
        chunks = Generator.bind().generate.bind(inp.prompt, inp.max_tokens, inp.temperature,
                                                inp.seed)
        text = Filter.bind(upper).apply.bind(chunks)
    return sg.Graph(text, name="charlm")


graph = build_graph()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m servegraph.pipelines.charlm")
    parser.add_argument("prompt", nargs="?", default="Beautiful is ")
    parser.add_argument("-n", "--max-tokens", type=int, default=200)
    parser.add_argument("-t", "--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(args.prompt + complete(args.prompt, args.max_tokens, args.temperature, args.seed))
    return 0


if __name__ == "__main__":
    import sys

    from servegraph.pipelines.charlm import main as package_main

    sys.exit(package_main())

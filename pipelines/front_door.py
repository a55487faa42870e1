"""The front door: a FastAPI app of your own in front of three graphs that share one stage,
served as one application (`sg.App`); the README's "The front door" shows this file whole.

    servegraph run servegraph.pipelines.front_door:app          # on Ray Serve
    servegraph run servegraph.pipelines.front_door:app --local  # in-process
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel

import servegraph as sg

API_KEY = "s3cret-key"


class Text(BaseModel):
    text: str


Graphs = Annotated[sg.Graphs, Depends(sg.graphs)]  # a route's view of the app's graphs


def require_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
    if x_api_key != API_KEY:
        raise HTTPException(status_code=401, detail="missing or wrong x-api-key")


@sg.deployment(num_replicas=1, max_ongoing_requests=50)
class Normalizer:                      # both graphs call this stage: one deployment
    def clean(self, text: str) -> str:
        if not text.strip():
            raise ValueError("nothing to clean: the text is blank")
        return " ".join(text.lower().split())

    def pid(self, text: str) -> int:
        return os.getpid()


@sg.deployment
def count_words(text: str) -> dict[str, int]:
    return {"words": len(text.split())}


@sg.deployment
def sum_digits(text: str) -> dict[str, int]:
    return {"sum": sum(int(ch) for ch in text if ch.isdigit())}


norm = Normalizer.bind()               # one bound class, shared by the graphs below
with sg.InputNode(Text) as inp:
    words = sg.Graph(count_words.bind(norm.clean.bind(inp.text)), name="words")
with sg.InputNode(Text) as inp:
    digits = sg.Graph(sum_digits.bind(norm.clean.bind(inp.text)), name="digits")
with sg.InputNode(Text) as inp:
    pids = sg.Graph(norm.pid.bind(inp.text), name="pids")

api = FastAPI(title="front door")


@api.get("/health")                    # a GET route of your own, no key needed
def health() -> dict[str, str]:
    return {"status": "ok"}


@api.post("/v1/words", dependencies=[Depends(require_key)])
async def words_route(body: Text, graphs: Graphs) -> dict[str, int]:
    counted = await graphs["words"].acall(body.model_dump())
    return {"count": counted["words"],
            "shared_pid": await graphs["pids"].acall(body.model_dump())}


app = sg.App({"/words": words, "/digits": digits}, graphs=[pids], ingress=api,
             name="front", dependencies=[Depends(require_key)])

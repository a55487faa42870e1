"""The README's front-door example is `pipelines/front_door.py`, whole, and it answers."""

from __future__ import annotations

from pathlib import Path

import httpx

import servegraph as sg
from servegraph.executors.local.front import local_front
from servegraph.pipelines import front_door

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_shows_the_example_whole() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```python\n", readme.index("## The front door")) + len("```python\n")
    block = readme[start:readme.index("```\n", start)]
    source = (ROOT / "pipelines" / "front_door.py").read_text()
    assert source.endswith(block)


async def test_the_example_answers_in_process() -> None:
    asgi = local_front(sg.compile(front_door.app))
    key = {"x-api-key": front_door.API_KEY}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi),
                                 base_url="http://front") as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        assert (await http.post("/words", json={"text": "a b"})).status_code == 401
        assert (await http.post("/words", json={"text": "A  b C"}, headers=key)).json() == {
            "words": 3}
        own = await http.post("/v1/words", json={"text": "x y"}, headers=key)
        assert own.json()["count"] == 2

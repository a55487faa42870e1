"""A stage declared with Ray's own decorator, then accepted by servegraph with its options."""

from __future__ import annotations

from ray import serve

import servegraph as sg


@serve.deployment(num_replicas=2, max_ongoing_requests=7)
class RayDoubler:
    def __call__(self, x: int) -> int:
        return 2 * x


RayDoubler = sg.deployment(RayDoubler)  # type: ignore[misc]


def ray_doubler_graph() -> sg.Graph:
    with sg.InputNode() as inp:
        out = RayDoubler.bind().__call__.bind(inp.x)
    return sg.Graph(out, name="raydec")

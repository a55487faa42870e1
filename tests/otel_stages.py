"""A graph whose driver and stage replicas export OpenTelemetry spans to a directory (the
`tracing` test on Serve): each deployment gets `SERVEGRAPH_OTEL` through its runtime_env."""

from __future__ import annotations

import servegraph as sg


@sg.deployment
class Upper:
    def __call__(self, text: str) -> str:
        return text.upper()


@sg.deployment
class Count:
    def __call__(self, text: str) -> int:
        return len(text)


@sg.deployment
def boom(text: str) -> str:
    raise ValueError(f"no luck with {text!r}")


def traced(directory: str) -> sg.Graph:
    """upper -> count, and a fallback over a stage that always fails; every deployment of it
    writes its spans under `directory`."""
    env = {"runtime_env": {"env_vars": {"SERVEGRAPH_OTEL": "1",
                                        "SERVEGRAPH_OTEL_DIR": directory}}}
    with sg.InputNode() as inp:
        shouted = Upper.options(ray_actor_options=env).bind()
        counted = Count.options(ray_actor_options=env).bind()
        count = counted.__call__.bind(shouted.__call__.bind(inp.text))
        safe = sg.fallback(boom.options(ray_actor_options=env).bind(inp.text),
                           default="none", name="lucky")
    return sg.Graph({"count": count, "safe": safe}, name="traced",
                    driver={"ray_actor_options": env})

"""Stages for the multiplexing tests (`sg.multiplexed`): importable, so a Serve replica loads
them by path. A head's model is its tenant's name with a per-tenant suffix; each replica
counts its own loads, so a call's answer says how many loads that replica made so far."""

from __future__ import annotations

from typing import Any

import servegraph as sg


class Head:
    """A tenant's model: answers with its own tenant's name."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    def predict(self, text: str) -> str:
        return f"{self.tenant}:{text}"


@sg.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class Heads:
    def __init__(self) -> None:
        self.loads: list[str] = []

    @sg.multiplexed(max_models_per_replica=3)
    async def load(self, model_id: str) -> Head:
        self.loads.append(model_id)
        return Head(model_id)

    async def predict(self, text: str) -> dict[str, Any]:
        model_id = sg.multiplexed_model_id()
        head = await self.load(model_id)
        return {"model_id": model_id, "answer": head.predict(text), "loads": list(self.loads),
                # on Serve the replica gave the stage Serve's own loader (serve.multiplexed)
                "serve_loader": getattr(self.load, "_serve_multiplexed_function", False)}

    @sg.batch(max_batch_size=4)
    async def batched(self, texts: list[str]) -> list[str]:
        return texts


@sg.deployment(ray_actor_options={"num_cpus": 0})
def pick_tenant(text: str) -> str:
    """A model id from a stage's output: the text's first word."""
    return text.split()[0]


@sg.deployment(ray_actor_options={"num_cpus": 0})
def shout(result: dict[str, Any]) -> str:
    """Reads a multiplexed call's answer downstream."""
    return str(result["answer"]).upper()


def tenant_graph() -> sg.Graph:
    """The model id from the input: `{"tenant": ..., "text": ...}`."""
    with sg.InputNode() as inp:
        heads = Heads.bind()
        out = heads.predict.options(model_id=inp.tenant).bind(inp.text)
    return sg.Graph(out, name="tenants")


def routed_graph() -> sg.Graph:
    """The model id from a stage's output, and a stage after the multiplexed call."""
    with sg.InputNode() as inp:
        heads = Heads.bind()
        tenant = pick_tenant.bind(inp.text)
        out = shout.bind(heads.predict.options(model_id=tenant).bind(inp.text))
    return sg.Graph(out, name="routed")


@sg.deployment(ray_actor_options={"num_cpus": 0})
class Plain:
    async def predict(self, text: str) -> str:
        return text


@sg.deployment(ray_actor_options={"num_cpus": 0})
class TwoLoaders:
    @sg.multiplexed
    async def load(self, model_id: str) -> str:
        return model_id

    @sg.multiplexed(max_models_per_replica=2)
    async def load_again(self, model_id: str) -> str:
        return model_id

    async def predict(self, text: str) -> str:
        return text

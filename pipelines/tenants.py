"""Per-tenant heads on one shared encoder: `sg.multiplexed` serving many small models.

The encoder is a PCA of scikit-learn's bundled digits (a small feature model, chosen over the
MiniLM encoder so the example and its tests run in seconds on a CPU); each tenant has its own
logistic-regression head over those features, answering its own yes/no question about the
digit. Heads are trained at first use into the model cache (`models.cached`), and a replica
holds at most `MAX_HEADS` of them, loading a tenant's head when a call names it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

import servegraph as sg

from .models import cached, fingerprint

RECIPE_VERSION = 1
SEED = 0
COMPONENTS = 32
MAX_HEADS = 3
# each tenant's question about a digit: its head says yes for these digits
TENANTS: dict[str, frozenset[int]] = {
    "even": frozenset({0, 2, 4, 6, 8}),
    "large": frozenset({5, 6, 7, 8, 9}),
    "round": frozenset({0, 6, 8, 9}),
    "prime": frozenset({2, 3, 5, 7}),
}


class TenantRequest(BaseModel):
    tenant: str
    pixels: list[float]  # 64 pixels of an 8x8 digit, 0..16


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.asarray(digits.data, dtype=np.float64) / 16.0, np.asarray(digits.target)


def _file(name: str, build: Any, *params: Any) -> Path:
    import sklearn

    key = fingerprint(RECIPE_VERSION, name, SEED, COMPONENTS, sklearn.__version__, params)
    return cached(f"tenants-{name}-{key}.npz", build)


def _train_encoder(path: Path) -> None:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=COMPONENTS, random_state=SEED).fit(_digits()[0])
    with path.open("wb") as out:
        np.savez(out, mean=pca.mean_, components=pca.components_)


def _train_head(tenant: str, path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    pixels, labels = _digits()
    features = encode_array(pixels)
    yes = np.isin(labels, sorted(TENANTS[tenant]))
    model = LogisticRegression(max_iter=2000, random_state=SEED).fit(features, yes)
    with path.open("wb") as out:
        np.savez(out, coef=model.coef_[0], intercept=model.intercept_)


@functools.lru_cache(maxsize=1)
def _encoder() -> tuple[np.ndarray, np.ndarray]:
    saved = np.load(_file("pca", _train_encoder))
    return saved["mean"], saved["components"]


def encode_array(pixels: np.ndarray) -> np.ndarray:
    """Pixels scaled to 0..1 -> PCA features."""
    mean, components = _encoder()
    return (pixels - mean) @ components.T


class TenantHead:
    """One tenant's logistic regression over the encoder's features."""

    def __init__(self, tenant: str) -> None:
        if tenant not in TENANTS:
            raise KeyError(f"no tenant {tenant!r}; tenants: {', '.join(TENANTS)}")
        saved = np.load(_file(f"head-{tenant}", functools.partial(_train_head, tenant),
                              sorted(TENANTS[tenant])))
        self.tenant = tenant
        self.coef, self.intercept = saved["coef"], float(saved["intercept"][0])

    def probability(self, features: list[float]) -> float:
        score = float(np.dot(self.coef, np.asarray(features)) + self.intercept)
        return float(1.0 / (1.0 + np.exp(-score)))


@sg.deployment(ray_actor_options={"num_cpus": 0.25})
class Encoder:
    def encode(self, pixels: list[float]) -> list[float]:
        return encode_array(np.asarray(pixels, dtype=np.float64)[None, :] / 16.0)[0].tolist()


@sg.deployment(ray_actor_options={"num_cpus": 0.25})
class Heads:
    """The tenants' heads: a replica keeps `MAX_HEADS`, and counts the heads it loaded."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    @sg.multiplexed(max_models_per_replica=MAX_HEADS)
    async def load(self, tenant: str) -> TenantHead:
        self.loaded.append(tenant)
        return TenantHead(tenant)

    async def answer(self, features: list[float]) -> dict[str, Any]:
        tenant = sg.multiplexed_model_id()
        head = await self.load(tenant)
        probability = head.probability(features)
        return {"tenant": tenant, "yes": bool(probability >= 0.5),
                "probability": round(probability, 6), "loads": len(self.loaded)}


def build_graph() -> sg.Graph:
    with sg.InputNode(TenantRequest) as inp:
        features = Encoder.bind().encode.bind(inp.pixels)
        out = Heads.bind().answer.options(model_id=inp.tenant).bind(features)
    return sg.Graph(out, name="tenants")

"""An application's plan: several graphs' plans behind one ingress deployment (`sg.App`).

Each graph keeps its own `CompiledPipeline` (its schedule, its stages, its views); the
application adds what they share: one ingress deployment (`driver`) holding every graph's
driver in-process, the union of their deployments (a stage two graphs share is one
deployment, listed once), and one GPU layout packed over that union. It answers the
questions a plan answers for what deploys it (`served()`, `driver`, `gpu_layout`, `cluster`,
`name`), so launching, sizing and the RayService read either alike.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr

from .cluster import ClusterSpec
from .plan import GpuLayout, Plan, StagePlan


class AppPlan(BaseModel):
    """The data of a compiled `sg.App` (see the module docstring). `routes` maps each path to
    the name of the graph served there; `plans` holds every graph's plan by name; `ingress`
    is the `module:attr` of the user's ASGI app (None: servegraph's own, or one not found in
    a module); `shared` names, per stage two or more graphs share, those graphs."""

    model_config = ConfigDict(frozen=True)

    name: str
    plans: dict[str, Plan]  # `CompiledApp` holds `CompiledPipeline`s
    routes: dict[str, str]
    driver: StagePlan
    ingress: str | None = None
    shared: dict[str, list[str]] = {}
    cluster: ClusterSpec | None = None
    gpu_layout: GpuLayout | None = None
    fuse: bool = True

    _front: Any = PrivateAttr(default=None)  # the user's ASGI app object, when compiled here
    _source: Any = PrivateAttr(default=None)  # the sg.App compiled, when compiled here

    @property
    def front(self) -> Any:
        """The user's ASGI app (FastAPI's) as compiled in this process, else None."""
        return self._front

    @property
    def source(self) -> Any:
        """The `sg.App` this was compiled from in this process, else None."""
        return self._source

    def __getstate__(self) -> dict[Any, Any]:
        """Pickled (to a replica), the plan leaves the objects it was compiled from behind:
        the user's app travels on its own (`serving.app.bind_front`)."""
        state = super().__getstate__()
        state["__pydantic_private__"] = {"_front": None, "_source": None}
        return state

    def remembering(self, front: Any, source: Any) -> AppPlan:
        """This plan with the objects it was compiled from kept beside its data."""
        plan = self.model_copy()
        plan._front, plan._source = front, source
        return plan

    def __eq__(self, other: object) -> bool:
        """Equal when the data is: the objects kept beside it are not compared."""
        if not isinstance(other, AppPlan):
            return NotImplemented
        return type(self) is type(other) and all(
            getattr(self, name) == getattr(other, name) for name in type(self).model_fields)

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, self.name, tuple(self.plans)))

    @property
    def deployments(self) -> list[StagePlan]:
        """Every graph's stages, a shared one once (first graph's copy), in graph order."""
        seen: dict[str, StagePlan] = {}
        for plan in self.plans.values():
            for stage in plan.deployments:
                seen.setdefault(stage.name, stage)
        return list(seen.values())

    def served(self) -> list[StagePlan]:
        """The stages deployed as Serve deployments of their own (not fused into a driver)."""
        return [stage for stage in self.deployments if stage.fused_into is None]

    def plans_of(self, stage: str) -> list[Plan]:
        """The graphs' plans that call `stage`: what its replicas serve calls for."""
        return [plan for plan in self.plans.values()
                if any(own.name == stage for own in plan.deployments)]

    def route_of(self, graph: str) -> str | None:
        """The path a graph is served at, or None for one only the app's routes call."""
        for route, name in self.routes.items():
            if name == graph:
                return route
        return None

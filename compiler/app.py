"""Compiling an `sg.App`: its graphs through the one pass list, together.

Each graph is validated and type-checked on its own. Deployment names are then made unique
across the application (`validate.unique_names` over every graph's actor groups, in graph
order): a group two graphs share (the same bound class, or the same function stage) keeps
one name, and so one deployment. Resources are derived per graph (a shared stage's facts
come out the same in each); the pack pass places the union of the stages once, so a shared
GPU stage is packed once; the fuse pass keeps a shared class stage out of any driver (a
shared function stage is fused into each graph's driver where all can, `_fused`); lower makes
each graph's plan, its node ids prefixed by the graph's index so a shared stage's replicas
tell the graphs' calls apart. The application's one ingress deployment takes the graphs'
fused stages' CPUs and the user's `sg.App(driver=...)` options over the driver defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ..dag import DeploymentOptions
from ..dag.app import App
from ..dag.site import user_site
from ..errors import BindError
from .appplan import AppPlan
from .cluster import ClusterSpec
from .emit.proto import proto_text, service_name
from .emit.rayservice import rayservice
from .emit.serve_config import serve_config
from .explain import explain
from .passes.capacity_app import plan_app
from .passes.capacity_options import CapacityDecision, replicas_fixed
from .passes.fuse import fuse_pass
from .passes.lower import driver_options, fused_cpus, lower
from .passes.pack import pack_pass
from .passes.predict import with_predictions
from .passes.resources import resources, stage_resources
from .passes.typecheck import typecheck
from .passes.validate import unique_names, validate
from .pipeline import CompiledPipeline
from .plan import StagePlan
from .profile import Profile, Target
from .state import CompileState, spec_of_group


class CompiledApp(AppPlan):
    """A compiled `sg.App`: what is made from its plan (see `AppPlan`)."""

    plans: dict[str, CompiledPipeline]

    def to_serve_config(self, app: str | None = None, **options: Any) -> dict[str, Any]:
        """A `serve deploy` config (dict) holding this application; `app` is the
        `module:attr` of the `sg.App` its builder imports (found by itself when the app is a
        module variable); `host`, `port` and `runtime_env` go into the config."""
        return serve_config(self, graphs=[app], **options)

    def to_rayservice(self, app: str | None = None, **options: Any) -> dict[str, Any]:
        """A KubeRay `RayService` manifest (dict) serving this application (the options are
        `compiler.emit.rayservice.rayservice`'s)."""
        return rayservice(self, app, **options)

    def to_proto(self) -> dict[str, str]:
        """Each graph's `.proto`, by graph name (`compiler.emit.proto`): one application
        serves them all, so each graph's methods carry its service's name (`WordsCall`,
        `WordsStream`), as Serve passes the ingress the method's name only."""
        return {name: proto_text(plan, service_name(name)) for name, plan in self.plans.items()}

    def explain(self) -> str:
        """The application (routes, shared stages, its ingress), then each graph's plan."""
        routes = ", ".join(f"{route} -> {name}" for route, name in self.routes.items())
        lines = [f"app {self.name!r}: {len(self.plans)} graphs, {len(self.served())} "
                 f"deployments + ingress {self.driver.name}",
                 f"  ingress: {self.ingress or 'servegraph routes only'}",
                 f"  routes: {routes or 'none (the ingress routes call the graphs)'}"]
        called = [name for name in self.plans if name not in self.routes.values()]
        if called:
            lines.append(f"  called by the ingress only: {', '.join(called)}")
        for stage, graphs in self.shared.items():
            lines.append(f"  shared: {stage} serves {', '.join(graphs)} (one deployment)")
        for plan in self.plans.values():
            lines += ["", explain(plan)]
        return "\n".join(lines)


def compile_app(app: App, cluster: ClusterSpec | None, fuse: bool, passes: Sequence[str],
                profiles: Mapping[str, Profile] | None = None,
                targets: Mapping[str, Target] | None = None) -> CompiledApp:
    """Check and compile every graph of `app` together (see the module docstring); `passes`
    is the compiler's pass list (`sg.compile` calls this for an `sg.App`). With `profiles`,
    the graphs they name are planned to their `targets` (`passes.capacity_app`)."""
    if not isinstance(app, App):
        raise BindError(f"compile_app needs an sg.App, got {type(app).__name__}",
                        site=user_site(), hint="sg.compile(sg.App({'/search': graph}))")
    states = {name: typecheck(validate(graph)) for name, graph in app.graphs.items()}
    states = _named_across(states)
    states = {name: resources(state, cluster) for name, state in states.items()}
    shared = _shared(states)
    decisions: dict[str, CapacityDecision] = {}
    if profiles:
        states, decisions = plan_app(states, shared, profiles, targets or {})
    layout = pack_pass(_union(states, cluster)).layout
    states = {name: dataclasses.replace(state, layout=layout) for name, state in states.items()}
    states, shared = _fused(states, shared, fuse)
    plans = {}
    for index, (name, state) in enumerate(states.items()):
        # ids a diagram takes as they are (DOT, Mermaid): the graph's index, not its name
        plans[name] = lower(state, list(passes), fuse, id_prefix=f"g{index}_")
        if name in decisions:
            plans[name] = with_predictions(plans[name], state, decisions[name])
    driver_name = f"{app.name}_driver"
    options = driver_options(app.driver_options, sum(
        fused_cpus(plan.deployments) for plan in plans.values()))
    if decisions and not replicas_fixed(app.driver_options):
        options["num_replicas"] = sum(each.driver_replicas for each in decisions.values())
    splits = {name: plan.driver.options["user_config"] for name, plan in plans.items()
              if "user_config" in plan.driver.options}
    if splits:  # each graph's split weights, by graph (`executors.ray.front`)
        options["user_config"] = {"graphs": splits}
    driver = _driver_plan(driver_name, app, options, cluster)
    compiled = CompiledApp(
        name=app.name, plans=plans,
        routes={route: graph.name for route, graph in app.routes.items()},
        driver=driver, ingress=_describe(app.ingress), shared=shared, cluster=cluster,
        gpu_layout=layout, fuse=fuse)
    return compiled.remembering(app.ingress, app)  # type: ignore[return-value]


def _driver_plan(name: str, app: App, options: dict[str, Any],
                 cluster: ClusterSpec | None) -> StagePlan:
    return StagePlan(name=name, role="driver", kind="driver", options=options,
                     resources=stage_resources(name, app.site,
                                               DeploymentOptions.model_validate(options),
                                               cluster),
                     site=str(app.site))


def _named_across(states: dict[str, CompileState]) -> dict[str, CompileState]:
    """Each graph's state with its deployment names made unique across the application: a
    group shared by graphs gets one name (see the module docstring)."""
    groups: dict[int, Any] = {}
    options: dict[int, DeploymentOptions] = {}
    for state in states.values():
        for group in state.groups:
            groups.setdefault(id(group), group)
            options.setdefault(id(group), state.options_of(group))
    names = unique_names(list(groups.values()), options)
    return {graph: dataclasses.replace(
        state, names={id(group): names[id(group)] for group in state.groups},
        options={names[id(group)]: state.options_of(group) for group in state.groups})
        for graph, state in states.items()}


def _fused(states: dict[str, CompileState], shared: dict[str, list[str]], fuse: bool
           ) -> tuple[dict[str, CompileState], dict[str, list[str]]]:
    """The fuse pass over each graph. A shared class stage is one object, so one deployment:
    never fused. A shared function stage holds no state: each graph fuses its own call of
    it where every graph can; where one cannot, it is one deployment for all of them. Also
    the stages that are one deployment serving several graphs, by those graphs."""
    classes = {name: graphs for name, graphs in shared.items()
               if not _is_function(states[graphs[0]], name)}
    fused = {name: fuse_pass(state, enabled=fuse, shared=classes)
             for name, state in states.items()}
    kept = {name: graphs for name, graphs in shared.items()
            if name in classes or not all(fused[graph].fusion[name].fused for graph in graphs)}
    if kept == classes:
        return fused, kept
    return {name: fuse_pass(state, enabled=fuse, shared=kept)
            for name, state in states.items()}, kept


def _is_function(state: CompileState, stage: str) -> bool:
    return next(spec_of_group(group).is_function for group in state.groups
                if state.name_of(group) == stage)


def _shared(states: dict[str, CompileState]) -> dict[str, list[str]]:
    """The stages two or more graphs call, by the graphs that call them."""
    callers: dict[str, list[str]] = {}
    for graph, state in states.items():
        for name in state.stage_names():
            callers.setdefault(name, []).append(graph)
    return {name: graphs for name, graphs in callers.items() if len(graphs) > 1}


def _union(states: dict[str, CompileState], cluster: ClusterSpec | None) -> CompileState:
    """One state holding every graph's stages once: what the pack pass places."""
    first = next(iter(states.values()))
    groups: dict[int, Any] = {}
    for state in states.values():
        for group in state.groups:
            groups.setdefault(id(group), group)
    names = {key: name for state in states.values() for key, name in state.names.items()}
    return dataclasses.replace(
        first, groups=tuple(groups.values()), names=names,
        options={name: option for state in states.values()
                 for name, option in state.options.items()},
        cluster=cluster,
        resources={name: facts for state in states.values()
                   for name, facts in state.resources.items()})


def _describe(front: Any) -> str | None:
    """The user's ASGI app in a line: FastAPI's title, else its type."""
    if front is None:
        return None
    title = getattr(front, "title", None)
    kind = type(front).__name__
    return f"{kind} app {title!r}" if isinstance(title, str) else kind

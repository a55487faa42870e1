"""`sg.App`: several graphs behind one front door, served as one application.

`sg.App({"/search": search, "/digits": digits}, ingress=fastapi_app)` mounts each graph's
`POST <route>` (with its `/-/plan`, `/-/openapi.json` and `/-/graph.svg`) on the user's own
ASGI app (FastAPI's, usually), whose routes, dependencies, middleware and OpenAPI work as in
FastAPI; its routes call any graph of the application by name (`sg.graphs`, a FastAPI
dependency, see `web.front`). `graphs=[...]` adds graphs that only the app's routes call.

The graphs compile together (`compiler.app`): a stage they share (the same bound class, or
the same function stage) is one deployment serving all of them, packed once. This module
holds only the user's declaration; it imports neither ray nor FastAPI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import BindError
from .graph import Graph, driver_options
from .options import DeploymentOptions
from .site import user_site


class App:
    """One application: `routes` maps a path (`"/search"`) to the graph served there;
    `graphs` are more graphs the ingress app's routes call but that have no route of their
    own; `ingress` is the user's ASGI app (a FastAPI app) in front, or None for a plain one;
    `dependencies` are FastAPI dependencies (`Depends(check_key)`) of the graphs' routes;
    `name` is the Serve application's; `driver` the ingress deployment's Serve options
    (as `sg.Graph(driver=...)`). Each graph is named by its own `name`, unique here."""

    def __init__(self, routes: Mapping[str, Graph] | None = None, *,
                 graphs: Sequence[Graph] = (), ingress: Any = None, name: str = "app",
                 dependencies: Sequence[Any] = (),
                 driver: Mapping[str, Any] | None = None) -> None:
        self.site = user_site()
        routes = dict(routes or {})
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise BindError(f"app name {name!r} must be letters, digits, '_' or '-'",
                            site=self.site, hint='sg.App({...}, name="shop")')
        self.name = name
        for route, graph in routes.items():
            _check_route(route, graph, self.site)
        for graph in graphs:
            if not isinstance(graph, Graph):
                raise BindError(f"graphs= holds a {type(graph).__name__}, not an sg.Graph",
                                site=self.site, hint="graphs=[sg.Graph(out, name='...')]")
        self.routes: dict[str, Graph] = {route.rstrip("/") or "/": graph
                                         for route, graph in routes.items()}
        self.graphs: dict[str, Graph] = {}
        for graph in [*self.routes.values(), *graphs]:
            seen = self.graphs.get(graph.name)
            if seen is not None and seen is not graph:
                raise BindError(
                    f"two graphs of the app are named {graph.name!r}", site=self.site,
                    hint="give each graph its own name: sg.Graph(out, name='...')")
            self.graphs[graph.name] = graph
        if not self.graphs:
            raise BindError("the app holds no graph", site=self.site,
                            hint='sg.App({"/search": search_graph}, ingress=app)')
        if ingress is not None and not callable(ingress):
            raise BindError(f"ingress= needs an ASGI app (FastAPI()), got "
                            f"{type(ingress).__name__}", site=self.site,
                            hint="sg.App({...}, ingress=fastapi.FastAPI())")
        self.ingress = ingress
        self.dependencies = list(dependencies)
        self.driver_options: DeploymentOptions = driver_options(
            driver, f"{name}_driver", self.site)

    def route_of(self, graph: Graph) -> str | None:
        """The path `graph` is served at, or None for one only the app's routes call."""
        for route, mounted in self.routes.items():
            if mounted is graph:
                return route
        return None

    def __repr__(self) -> str:
        return f"<sg.App {self.name!r}: {', '.join(self.graphs)}>"


def _check_route(route: Any, graph: Any, site: Any) -> None:
    if not isinstance(route, str) or not route.startswith("/") or "/-/" in route + "/":
        raise BindError(f"route {route!r} must be a path starting with '/' (and not under "
                        "'/-/', servegraph's own views)", site=site,
                        hint='sg.App({"/search": search_graph})')
    if not isinstance(graph, Graph):
        raise BindError(f"route {route!r} maps to a {type(graph).__name__}, not an sg.Graph",
                        site=site, hint='sg.App({"/search": sg.Graph(out, name="search")})')

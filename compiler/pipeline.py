"""`CompiledPipeline`: the plan (`plan.Plan`) with what is made from it.

The artifacts live in their own modules (`explain`, `emit.serve_config`, `emit.rayservice`),
which read the plan's data; this class only names them as methods, so imports flow one way.
"""

from __future__ import annotations

from typing import Any

from .emit.proto import proto_text
from .emit.rayservice import rayservice
from .emit.serve_config import serve_config
from .explain import explain
from .plan import Plan


class CompiledPipeline(Plan):
    """The compiled plan: a schedule of nodes, the deployments and the ingress driver."""

    def to_serve_config(self, graph: str | None = None, **options: Any) -> dict[str, Any]:
        """A `serve deploy` config (dict) for this pipeline. `graph` is the `module:attr` its
        application builder imports (found by itself when the graph is a module variable);
        `host`, `port`, `grpc_port` (Serve's gRPC proxy, see `to_proto`) and `runtime_env` go
        into the config."""
        return serve_config(self, graphs=[graph], **options)

    def to_rayservice(self, graph: str | None = None, *, name: str | None = None,
                      image: str | None = None, ray_version: str | None = None,
                      **options: Any) -> dict[str, Any]:
        """A KubeRay `RayService` manifest (dict): this pipeline's Serve config and a Ray cluster
        sized from the GPU layout. `image` must contain servegraph and the graph's module; the
        other options (`gpu_image`, `namespace`, `runtime_env`, `worker_cpus`, ...) are
        `compiler.emit.rayservice.rayservice`'s."""
        return rayservice(self, graph, name=name, image=image, ray_version=ray_version,
                          **options)

    def to_proto(self) -> str:
        """The `.proto` of this pipeline's gRPC service (`compiler.emit.proto`): what a client
        compiles its stubs from; the served driver builds the same messages at run time."""
        return proto_text(self)

    def explain(self) -> str:
        """What the compiler decided: deployments, resources, the GPU layout, headroom."""
        return explain(self)

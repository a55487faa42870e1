"""Servegraph's servicer function for Serve's gRPC proxy: every graph's service, with no stubs.

Serve's proxy imports the functions named in `grpc_options.grpc_servicer_functions` once, when
Serve starts, and calls each with a placeholder servicer and its server; the server rewrites
every method handler so that a call goes to the application named by the `application`
metadata, to its ingress deployment's method named like the gRPC method, with the request as
the handler deserialized it. Two consequences shape this module:

- the services must be known when Serve starts, but graphs are deployed later (and the test
  session starts Serve once for all of them). So `add_servegraph_to_server` registers no named
  service: `GraphServices` answers any method of any service under `servegraph.` (what
  `compiler.emit.proto` generates), a name ending in `Stream` as server streaming, one ending
  in `Call` as unary, and nothing else (so no other driver method is reachable over gRPC);
- it registers no request deserializer, so the proxy forwards the client's bytes as they came
  and the driver decodes them with the message classes it builds from its plan
  (`web.grpc_ingress`). The proxy never needs the graph's code or messages.

The handlers come from the server's own rewriting (`_override_method_handler` of Ray's
`gRPCGenericServer`, read by name once here; `tests/serving/test_grpc.py` fails when Ray moves
it), so each call takes exactly the path a generated servicer's call would.
Reflection (`grpcurl list`) does not list these services: use the `.proto` instead.
"""

from __future__ import annotations

from typing import Any

import grpc

from ...compiler.emit.proto import PACKAGE_ROOT, STREAM_METHOD, UNARY_METHOD

# Ray's gRPCGenericServer method that turns a method handler into one routed to a replica
OVERRIDE = "_override_method_handler"
MAX_CACHED = 1024  # method paths whose handlers are kept (a client cannot grow it unbounded)


def streaming(method: str) -> bool | None:
    """For `/servegraph.<graph>.<Graph>/<Method>`: True for a server-streaming method, False
    for a unary one, None for a path that is not servegraph's."""
    service, _, name = method.lstrip("/").partition("/")
    if not service.startswith(PACKAGE_ROOT + ".") or "/" in name:
        return None
    if name.endswith(STREAM_METHOD):
        return True
    return False if name.endswith(UNARY_METHOD) else None


class GraphServices(grpc.GenericRpcHandler):
    """Serve's gRPC server asks a generic handler for each method path it does not know."""

    # Ray's server reads a registered handler's `_method_handlers` to rewrite them (and to
    # list services for reflection): none here, each path is routed when first called
    _method_handlers: dict[str, grpc.RpcMethodHandler] = {}

    def __init__(self, server: Any) -> None:
        self.override = getattr(server, OVERRIDE)
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method  # type: ignore[attr-defined]
        handler = self.handlers.get(method)
        if handler is not None:
            return handler
        stream = streaming(method)
        if stream is None:
            return None
        make = grpc.unary_stream_rpc_method_handler if stream else \
            grpc.unary_unary_rpc_method_handler
        handler = self.override(method, make(_replaced))  # no deserializer: bytes pass on
        if len(self.handlers) < MAX_CACHED:
            self.handlers[method] = handler
        return handler


def _replaced(request: Any, context: Any) -> None:
    """The behaviour Serve's server replaces with its call to the replica (never called)."""
    raise NotImplementedError


def add_servegraph_to_server(servicer: Any, server: Any) -> None:
    """The servicer function Serve's proxy calls (`compiler.emit.proto.GRPC_SERVICER`)."""
    server.add_generic_rpc_handlers((GraphServices(server),))

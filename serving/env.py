"""Ray Serve's environment switches servegraph turns on, in one place.

Serve reads each of them when a process imports `ray.serve` or when Ray starts its controller,
proxies and replicas, so they are set before `ray.init` (the embedded Ray, the test session)
or exported where a cluster is started by hand (the RayService head gets `SERVE_ENV`).
"""

from __future__ import annotations

from ..compiler.passes.pack import PACK_SCHEDULING_ENV

# Serve's own packing of replicas onto nodes, which the pack pass models
SERVE_ENV = dict(PACK_SCHEDULING_ENV)

# Serve's fastest safe settings (Ray >= 2.55): user code and the router on the replica's own
# loop, buffered request logs, gRPC between deployments. Measured on the hand-written diamond
# (2 cores, concurrency 32): 95 -> 217 req/s. Replicas and the Serve controller read it when
# Ray starts them; this process's handles keep the settings Serve was imported with, and
# `PipelineHandle.call` works under either.
FAST_PATH_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}

# Serve's hook for proxy middlewares (ray#35619): a request whose ingress replica died gets a
# JSON 502 naming the driver (see `web.proxy`)
PROXY_ENV = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "servegraph.web.proxy:middlewares"}

# In the throughput-optimised mode the driver answers HTTP itself (Serve's direct ingress), and
# a stopped driver replica lingers this long so that an external load balancer can drop it. An
# embedded Ray has no load balancer: without this, deleting an application or shutting Serve
# down waited 30 s and then warned "Controller failed to shut down within 30.0s".
DIRECT_INGRESS_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0"}

# what an embedded Ray (`sg.serve`, `servegraph run`) starts with
EMBEDDED_ENV = {**SERVE_ENV, **FAST_PATH_ENV, **PROXY_ENV, **DIRECT_INGRESS_ENV}
# what the test session's Ray starts with (handles there stay on Serve's default path)
SESSION_ENV = {**SERVE_ENV, **PROXY_ENV}

# Serve's throughput-optimised mode writes replicas' log lines to files only (buffered); with
# `servegraph run --access-log` the embedded Ray's replicas log to stderr too, which Ray shows
# on the terminal that started it
LOG_TO_STDERR_ENV = {"RAY_SERVE_LOG_TO_STDERR": "1"}

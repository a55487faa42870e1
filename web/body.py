"""What the driver's ingress (`web.ingress`) and the proxy middleware (`web.proxy`) agree on
about a request's body, here so that Serve's proxy imports nothing heavier to read them."""

from __future__ import annotations

import os

# the largest body the driver reads; a larger one gets a 413 (`SERVEGRAPH_MAX_BODY_BYTES`)
MAX_BODY_BYTES = int(os.environ.get("SERVEGRAPH_MAX_BODY_BYTES", 10 * 2**20))
# the ASGI scope key where the proxy middleware leaves a body it read whole: the request then
# carries it to whichever driver replica Serve picks, retries included
BODY_SCOPE_KEY = "servegraph.body"

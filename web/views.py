"""The read-only pages the ingress serves on GET below its route, built from the plan:

- `/-/plan`: the plan as JSON, with anything that looks like a secret redacted. A stage's
  constructor arguments travel in the plan verbatim (the replicas need them), but the served view
  is for people and dashboards: an argument whose parameter name says secret (token, key,
  secret, password, credential, ...), any value under such a key (an `env_vars` entry
  `HF_TOKEN`), and any constant string that looks like a token (a known prefix such as `sk-` or
  `ghp_`, a JWT, or a long unbroken mix of letters and digits) shows as `<redacted>`. The plan
  itself is unchanged.
- `/-/openapi.json`: an OpenAPI 3.1 description of `POST <route>`, its request body the
  `InputNode`'s pydantic model (any JSON without one), its responses the pipeline's output
  (200) and the error body of every status the ingress answers with. Fuzzers (schemathesis)
  and clients read it.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from ..compiler import CompiledPipeline
from ..compiler.templates import const
from ..dag.request import takes_raw_request

REDACTED = "<redacted>"
SECRET_NAME = re.compile(
    r"token|secret|passw(or)?d|passphrase|credential|api_?key|access_?key|private_?key|"
    r"(^|_)key$|auth|cookie|session_?id|signature|^pwd$", re.IGNORECASE)
_TOKEN_PREFIX = re.compile(
    r"^(sk-|sk_|pk_|rk_|ghp_|gho_|ghs_|ghu_|github_pat_|glpat-|hf_|xox[abprs]-|AKIA|ASIA|"
    r"AIza|ya29\.|eyJ[\w-]+\.[\w-]+\.)")
_OPAQUE = re.compile(r"^[A-Za-z0-9_\-+/=]{32,}$")


@dataclass(frozen=True)
class View:
    """A read-only page the ingress serves on GET below its route, e.g. `/-/plan`.
    `for_route`, when given, makes the body for the route it is served below."""

    body: bytes
    media_type: str
    for_route: Callable[[str], bytes] | None = None

    def render(self, route: str) -> bytes:
        return self.for_route(route) if self.for_route is not None else self.body


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def looks_like_token(value: Any) -> bool:
    """A string that reads like a credential rather than a word, path or number."""
    if not isinstance(value, str) or any(ch.isspace() for ch in value):
        return False
    if _TOKEN_PREFIX.match(value) and len(value) >= 12:
        return True
    return bool(_OPAQUE.match(value)) and any(ch.isdigit() for ch in value) and any(
        ch.isalpha() for ch in value)


def redacted_plan(plan: CompiledPipeline) -> dict[str, Any]:
    """The plan's JSON with secrets replaced by `<redacted>` (see the module docstring)."""
    data = json.loads(plan.model_dump_json())
    for stage, shown in zip(plan.deployments, data.get("deployments", [])):
        names = _init_parameter_names(plan, stage)
        for index, name in enumerate(names[:len(shown.get("init_args", []))]):
            if is_secret_name(name):
                shown["init_args"][index] = const(REDACTED)
    return _redact(data)


def _init_parameter_names(plan: CompiledPipeline, stage: Any) -> list[str]:
    if stage.kind != "class" or not stage.import_path:
        return []
    try:
        target = plan.resolve(stage.import_path)
        parameters = inspect.signature(target.__init__).parameters
    except Exception:  # a plan loaded without its code: the values' looks still decide
        return []
    return [name for name in parameters if name != "self"]


def _redact(value: Any, key: str = "") -> Any:
    if key and is_secret_name(key) and value is not None and not isinstance(value, bool):
        return _blank(value)
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return REDACTED if looks_like_token(value) else value


def _blank(value: Any) -> Any:
    """A secret-named entry: its values go, its shape (an argument template's tags) stays."""
    if isinstance(value, dict):
        return {k: _blank(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blank(v) for v in value]
    return REDACTED


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "stage", "request_id"],
    "properties": {
        "error": {"type": "string"},
        "stage": {"type": ["string", "null"]},
        "request_id": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}
ERROR_STATUSES = {
    "400": "the body is not JSON (or is empty)",
    "413": "the body is larger than the ingress accepts",
    "422": "the body does not fit the pipeline's input (`errors` names the fields)",
    "500": "a stage failed (`stage` names it)",
    "503": "the service is at its queue limit or has no replica yet: retry after `Retry-After`",
    "504": "a stage ran past its timeout_s, or the request past its deadline (`stage` names "
           "it)",
}
# what a pipeline taking the request itself (`sg.HttpRequest`) accepts: any body, as it is
RAW_BODY = {"multipart/form-data": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string",
                                                    "contentMediaType": "application/"
                                                    "octet-stream"}},
            "*/*": {"schema": {}}}


def openapi(plan: CompiledPipeline, route: str) -> dict[str, Any]:
    """OpenAPI 3.1 for `POST <route>` (see the module docstring)."""
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    body: dict[str, Any] = {}
    model = plan.input_type()
    raw = takes_raw_request(plan.input_model)
    if model is not None and not raw:
        schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        name = getattr(model, "__name__", "Input")
        components[name] = schema
        body = {"$ref": f"#/components/schemas/{name}"}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    responses: dict[str, Any] = {
        "200": {"description": "the pipeline's output, as JSON without an envelope",
                "content": {"application/json": {"schema": {}}}}}
    responses.update({status: {"description": text, "content": error}
                      for status, text in ERROR_STATUSES.items()})
    return {
        "openapi": "3.1.0",
        "info": {"title": plan.name, "version": "1", "description":
                 f"servegraph pipeline {plan.name!r}: POST its input as JSON."},
        "paths": {route: {"post": {
            "operationId": "run",
            "summary": f"run pipeline {plan.name}",
            "parameters": [{"name": "x-request-id", "in": "header", "required": False,
                            "schema": {"type": "string"}}],
            "requestBody": {"required": not raw,
                            "content": RAW_BODY if raw else
                            {"application/json": {"schema": body}}},
            "responses": responses,
        }}},
        "components": {"schemas": components},
    }


def plan_views(plan: CompiledPipeline, diagram_svg: bytes | None) -> dict[str, View]:
    """`GET <route>/-/plan` (the plan as JSON, secrets redacted), `GET <route>/-/openapi.json`
    and, when rendered, `GET <route>/-/graph.svg`."""
    views = {
        "/-/plan": View(json.dumps(redacted_plan(plan), indent=2).encode(), "application/json"),
        "/-/openapi.json": View(b"", "application/json", for_route=lambda route: json.dumps(
            openapi(plan, route or "/"), indent=2).encode()),
    }
    if diagram_svg is not None:
        views["/-/graph.svg"] = View(diagram_svg, "image/svg+xml")
    return views

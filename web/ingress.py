"""HTTP for the driver deployment: `POST <route_prefix>` with the request payload as JSON.

A success returns the pipeline's output as JSON with no envelope. An error returns
`{"error", "stage", "request_id"}` (plus `errors`, the field errors, for a 422): 400 for a body
that is not JSON (an empty body too, when the pipeline reads its input; a pipeline that does
not gets `None`), 405 for a method other than POST, 413 for a body over `max_body_bytes`
(`SERVEGRAPH_MAX_BODY_BYTES`, 10 MiB by default; read chunk by chunk and dropped at the limit,
never buffered whole), 422 for a body that does not fit the input, 500 naming the stage that
failed, 504 naming a stage that ran past its `timeout_s`, or the stages still running when
the request's deadline passed (the graph's `timeout_s`, or less: the client's
`x-request-timeout` header, in seconds; not a positive number: 400). A full queue is
answered before the request gets here: Serve's proxy returns 503 for the driver's
`max_queued_requests` (with `Retry-After` when the driver's `backpressure_config` sets
`retry_after_s`). Every response carries `x-request-id` (the client's, or one made here), and
every 5xx is logged with it.
The body is only ever parsed as JSON: client data is never unpickled. A failed request never
takes the service down: the next one is served as usual.

A pipeline whose input is `sg.HttpRequest` (`raw_input=True`) gets the request itself instead:
the body as read (the same limit and 413), its content type, a `multipart/form-data` or
`application/x-www-form-urlencoded` body's files and fields (a malformed one: 400), the headers
and the query parameters. Its stages judge the body (`sg.InputError`: a 422 naming it).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python
from starlette.datastructures import Headers
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..dag.request import HttpRequest, Upload, media_type
from ..errors import InputError, PipelineError, StageError
from .body import BODY_SCOPE_KEY, MAX_BODY_BYTES
from .views import View, plan_views

__all__ = ["BODY_SCOPE_KEY", "MAX_BODY_BYTES", "View", "error_body", "error_response",
           "handle_http", "json_bytes", "new_request_id", "plan_views", "raw_request",
           "request_id_for", "serve_http"]

Runner = Callable[..., Awaitable[Any]]  # run(payload, request_id, deadline_s=None)
Streamer = Callable[[Any, str], AsyncIterator[Any]]
logger = logging.getLogger("servegraph")


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_for(request: Request, new_id: Callable[[], str] = new_request_id) -> str:
    """The client's `x-request-id` (at most 128 characters), else `new_id()`: behind Serve's
    proxy, the id the proxy made for this request (the driver passes it in)."""
    given = request.headers.get("x-request-id")
    return given[:128] if given else new_id()


def error_body(error: BaseException, request_id: str) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body for an error raised while serving a request."""
    if isinstance(error, InputError):
        return error.status_code, {"error": error.message, "stage": None,
                                   "errors": error.errors, "request_id": request_id}
    if isinstance(error, StageError):
        return error.status_code, {"error": str(error), "stage": error.stage,
                                   "request_id": request_id}
    return 500, {"error": f"{type(error).__name__}: {error}", "stage": None,
                 "request_id": request_id}


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, read chunk by chunk; None as soon as it is over `limit` bytes (a declared
    `content-length` over it is refused before reading anything). A body the proxy
    middleware already read whole comes in the scope (`BODY_SCOPE_KEY`)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    carried = request.scope.get(BODY_SCOPE_KEY)
    if isinstance(carried, bytes):
        return carried if len(carried) <= limit else None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(body: bytes, needs_body: bool) -> tuple[Any, str | None]:
    """The payload a JSON body holds, or the 400's message: the body is not JSON (RFC 8259:
    `NaN` and `Infinity`, which Python's `json` would take, are not), or it is empty where
    the pipeline reads its input (an empty body is `None` to one that does not)."""
    if not body:
        return None, "the request body is empty: POST a JSON body" if needs_body else None
    try:
        return json.loads(body, parse_constant=_refuse_constant), None
    except (ValueError, RecursionError) as exc:
        return None, f"the request body is not JSON: {exc}"


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def raw_request(request: Request, body: bytes) -> tuple[HttpRequest | None, str | None]:
    """The request as a raw-input pipeline's payload, or the 400's message for a form body
    that cannot be parsed. `body`: the body already read (under the size limit)."""
    content_type = request.headers.get("content-type", "")
    form: dict[str, str] = {}
    files: dict[str, Upload] = {}
    kind = media_type(content_type)
    if body and kind in FORM_TYPES:
        try:
            form, files = await form_parts(request.headers, body, kind)
        except MultiPartException as exc:
            return None, f"the {kind} body cannot be parsed: {exc.message}"
    headers: dict[str, str] = {}
    for name, value in request.headers.items():  # names come lower-case
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return HttpRequest(body=body, content_type=content_type, headers=headers,
                       query=dict(request.query_params), form=form, files=files), None


async def form_parts(headers: Headers, body: bytes, kind: str
                     ) -> tuple[dict[str, str], dict[str, Upload]]:
    """A form body's text fields and files (Starlette's parsers, over the bytes read)."""

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    parser = (MultiPartParser(headers, chunks()) if kind == FORM_TYPES[0]
              else FormParser(headers, chunks()))
    parsed = await parser.parse()
    form: dict[str, str] = {}
    files: dict[str, Upload] = {}
    try:
        for name, value in parsed.multi_items():
            if isinstance(value, str):
                form[name] = value
            else:
                files[name] = Upload(filename=value.filename,
                                     content_type=value.content_type or "",
                                     data=await value.read())
    finally:
        await parsed.close()
    return form, files


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259); send null or a string")


def json_bytes(value: Any) -> bytes:
    """A value as strict JSON (no NaN or Infinity), or a ValueError saying why not."""
    try:
        return json.dumps(to_jsonable_python(value), allow_nan=False,
                          separators=(",", ":"), ensure_ascii=False).encode()
    except PydanticSerializationError as exc:
        raise ValueError(str(exc)) from None
    except ValueError as exc:
        raise ValueError(f"{exc} (NaN and Infinity are not JSON)") from None


TIMEOUT_HEADER = "x-request-timeout"


def request_timeout(request: Request) -> tuple[float | None, str | None]:
    """The budget the client asks for in seconds (`x-request-timeout`; the graph's
    `timeout_s` caps it), or the 400's message for one that is not a positive number."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None, None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        return None, f"{TIMEOUT_HEADER}: {raw[:40]!r} is not a positive number of seconds"
    return seconds, None


def error_response(status: int, content: dict[str, Any],
                   headers: dict[str, str]) -> JSONResponse:
    if status >= 500:
        logger.warning("request %s: %d from stage %s: %s", content.get("request_id"), status,
                       content.get("stage"), content.get("error"))
    return JSONResponse(content, status_code=status, headers=headers)


async def handle_http(request: Request, run: Runner, *, echo_request_id: bool = True,
                      views: Mapping[str, View] | None = None,
                      stream: Streamer | None = None,
                      max_body_bytes: int | None = None, needs_body: bool = False,
                      new_id: Callable[[], str] = new_request_id,
                      output_stage: str | None = None, raw_input: bool = False) -> Response:
    """`serve_http`, with any failure of its own still answered in the JSON error form (a
    500 with the request id, never a bare-text one)."""
    try:
        return await serve_http(request, run, echo_request_id=echo_request_id, views=views,
                                stream=stream, max_body_bytes=max_body_bytes,
                                needs_body=needs_body, new_id=new_id,
                                output_stage=output_stage, raw_input=raw_input)
    except Exception as exc:
        request_id = request_id_for(request, new_id)
        headers = {"x-request-id": request_id} if echo_request_id else {}
        logger.exception("request %s: the ingress failed", request_id)
        return error_response(500, {"error": f"{type(exc).__name__}: {exc}", "stage": None,
                            "request_id": request_id}, headers)


async def serve_http(request: Request, run: Runner, *, echo_request_id: bool = True,
                     views: Mapping[str, View] | None = None,
                     stream: Streamer | None = None,
                     max_body_bytes: int | None = None, needs_body: bool = False,
                     new_id: Callable[[], str] = new_request_id,
                     output_stage: str | None = None, raw_input: bool = False) -> Response:
    """Serve one HTTP request with `run(payload, request_id)`, the pipeline's entry point.

    `views` maps a path suffix (`/-/plan`, `/-/graph.svg`) to a page served on GET.
    `echo_request_id=False` behind Serve's proxy, which already sets `x-request-id` (the
    client's when given) on every response. `max_body_bytes` (default `MAX_BODY_BYTES`) bounds
    the body: a larger one gets a 413. `needs_body` (`plan.reads_input()`: the graph reads its
    `InputNode`) makes an empty body a 400; else it is the payload `None`. With `stream` (a
    pipeline whose output is a stream) the response is chunked: text chunks as they are,
    other chunks as JSON lines.
    `new_id` makes the request id when the client sent none. `output_stage` names the stage
    that made the output, for the 500 of an output that is not JSON. `raw_input`
    (`takes_raw_request(plan.input_model)`) passes the request as an `HttpRequest`, its body
    unparsed (see the module's docstring)."""
    request_id = request_id_for(request, new_id)
    headers = {"x-request-id": request_id} if echo_request_id else {}
    if request.method == "GET" and views:
        path = request.url.path.rstrip("/")
        for suffix, view in views.items():
            if path.endswith(suffix):
                return Response(view.render(path[:-len(suffix)] or "/"),
                                media_type=view.media_type, headers=headers)
    if request.method != "POST":
        return JSONResponse(
            {"error": f"{request.method} is not allowed: POST a JSON body",
             "stage": None, "request_id": request_id},
            status_code=405, headers={**headers, "allow": "POST"})
    limit = MAX_BODY_BYTES if max_body_bytes is None else max_body_bytes
    body = await read_body(request, limit)
    if body is None:
        return JSONResponse({"error": f"the request body is larger than {limit} bytes: send "
                             "less (the limit is SERVEGRAPH_MAX_BODY_BYTES)",
                             "stage": None, "request_id": request_id},
                            status_code=413, headers={**headers, "connection": "close"})
    payload, problem = (await raw_request(request, body) if raw_input
                        else parse_body(body, needs_body))
    deadline_s, bad_timeout = request_timeout(request)
    problem = problem or bad_timeout
    if problem is not None:
        return JSONResponse({"error": problem, "stage": None, "request_id": request_id},
                            status_code=400, headers=headers)
    if stream is not None:
        return await _streaming(stream(payload, request_id), request_id, headers)
    try:
        result = await run(payload, request_id, deadline_s=deadline_s)
    except Exception as exc:  # a servegraph error; anything else is still answered as JSON
        return error_response(*error_body(exc, request_id), headers)
    try:
        output = json_bytes(result)
    except ValueError as exc:
        return error_response(500, {"error": f"the pipeline's output is not JSON: {exc}",
                            "stage": output_stage, "request_id": request_id}, headers)
    return Response(output, media_type="application/json", headers=headers)


async def _streaming(chunks: AsyncIterator[Any], request_id: str,
                     headers: dict[str, str]) -> Response:
    """A chunked response. The first chunk is awaited before the status is sent, so a request
    that fails before producing anything gets its 4xx/5xx; a failure mid-stream ends the body
    (JSON lines: with a last line `{"error", "stage", "request_id"}`)."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        return Response(b"", media_type="text/plain; charset=utf-8", headers=headers)
    except PipelineError as exc:
        return error_response(*error_body(exc, request_id), headers)
    text = isinstance(first, str)

    def encode(chunk: Any) -> bytes:
        if text and isinstance(chunk, str):
            return chunk.encode()
        return json_bytes(chunk) + b"\n"

    async def body() -> AsyncIterator[bytes]:
        try:
            yield encode(first)
            async for chunk in chunks:
                yield encode(chunk)
        except (PipelineError, ValueError) as exc:
            logger.warning("request %s: stream ended by %s", request_id, exc)
            if not text:
                error = exc if isinstance(exc, PipelineError) else PipelineError(
                    f"a chunk is not JSON: {exc}")
                yield json_bytes(error_body(error, request_id)[1]) + b"\n"

    media_type = "text/plain; charset=utf-8" if text else "application/x-ndjson"
    return StreamingResponse(body(), media_type=media_type, headers=headers)

"""gRPC for the driver deployment: a graph's `Call` and `Stream` methods, with no stubs.

Serve's gRPC proxy hands the ingress deployment the request as the client sent it (servegraph's
servicer registers no deserializer, see `executors.ray.grpc_service`), and calls the method
named like the gRPC method. This module turns those bytes into the pipeline's payload and its
output back into a message, with message classes built at run time (`GrpcCodec`, from
`compiler.emit.proto.ProtoSchema`: the schema `servegraph compile --proto` prints, so client
and server agree by construction), and maps errors to status codes:

- a request that does not parse, or does not fit the input model: `INVALID_ARGUMENT`;
- a stage that failed: `INTERNAL`, the details naming the stage (as the HTTP 500 does);
- a stage past its `timeout_s`, or the request past its deadline: `DEADLINE_EXCEEDED`;
- `Stream` on a graph whose output is not a stream: `UNIMPLEMENTED`.

The request id (the client's `x-request-id` metadata, else Serve's) goes back as the
trailing metadata `x-request-id`; a client's `x-request-timeout` metadata (seconds) bounds the
request as the HTTP header does. A failed request never stops the service.

`GrpcIngress` takes the driver's `run`/`stream` callables per call, so an ingress holding
several graphs keeps one per graph and calls the same functions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from ..compiler.emit.proto import JSON, ProtoField, ProtoSchema, proto_schema
from ..compiler.plan import Plan
from ..errors import InputError, PipelineError, StageError, StageTimeoutError
from .ingress import TIMEOUT_HEADER, Runner, Streamer, json_bytes, new_request_id

__all__ = ["GrpcCodec", "GrpcIngress", "grpc_status"]

logger = logging.getLogger("servegraph")
REQUEST_ID = "x-request-id"
MAX_DETAILS = 2000  # characters of a status's details: they travel in HTTP/2 trailers
_TYPES = {"string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
          "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
          "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
          "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
          "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES}


def file_descriptor(schema: ProtoSchema) -> descriptor_pb2.FileDescriptorProto:
    """The schema as a `FileDescriptorProto`: what `protoc` would make of `schema.text()`."""
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"{schema.package.replace('.', '/')}.proto", package=schema.package,
        syntax="proto3")
    label = descriptor_pb2.FieldDescriptorProto
    for message in schema.messages:
        described = proto.message_type.add(name=message.name)
        for spec in message.fields:
            kind = "string" if spec.kind == JSON else spec.kind
            added = described.field.add(
                name=spec.name, number=spec.number, json_name=json_name(spec.name),
                label=label.LABEL_REPEATED if spec.repeated else label.LABEL_OPTIONAL)
            if spec.is_message:
                added.type = label.TYPE_MESSAGE
                added.type_name = f".{schema.package}.{kind}"
            else:
                added.type = _TYPES[kind]
            if spec.optional and not spec.is_message:  # proto3 `optional`: a synthetic oneof
                added.proto3_optional = True
                added.oneof_index = len(described.oneof_decl)
                described.oneof_decl.add(name=f"_{spec.name}")
    service = proto.service.add(name=schema.service)
    service.method.add(name=schema.unary, input_type=f".{schema.package}.{schema.request}",
                       output_type=f".{schema.package}.{schema.reply}")
    if schema.chunk is not None:
        service.method.add(name=schema.streaming, input_type=f".{schema.package}.{schema.request}",
                           output_type=f".{schema.package}.{schema.chunk}",
                           server_streaming=True)
    return proto


def json_name(name: str) -> str:
    """A field's JSON name as `protoc` derives it (`top_k` -> `topK`)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class GrpcCodec:
    """A schema's messages as classes (in a pool of their own, so graphs never clash), and
    the conversions between them and the pipeline's values."""

    def __init__(self, schema: ProtoSchema) -> None:
        self.schema = schema
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file_descriptor(schema))
        self.classes = {message.name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{schema.package}.{message.name}"))
            for message in schema.messages}
        self.fields = {message.name: message.fields for message in schema.messages}

    def decode(self, data: bytes) -> Any:
        """The payload a request message holds; `InputError` for bytes that do not parse."""
        message = self.classes[self.schema.request]()
        try:
            message.ParseFromString(data)
            values = self._values(message)
        except (DecodeError, ValueError) as exc:
            raise InputError(f"the request is not a {self.schema.request} message: "
                             f"{exc}") from None
        if self.schema.request in self.schema.wrappers:
            return values.get("value")
        return values

    def _values(self, message: Message) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for spec in self.fields[type(message).DESCRIPTOR.name]:
            value = getattr(message, spec.name)
            if spec.repeated:
                values[spec.name] = [self._values(item) if spec.is_message else item
                                     for item in value]
            elif (spec.optional or spec.is_message) and not message.HasField(spec.name):
                continue  # unset: the model's default applies
            elif spec.kind == JSON:
                values[spec.name] = _json(spec, value)
            else:
                values[spec.name] = self._values(value) if spec.is_message else value
        return values

    def reply(self, value: Any) -> Message:
        return self.encode(self.schema.reply, value)

    def chunk(self, value: Any) -> Message:
        return self.encode(self.schema.chunk or self.schema.reply, value)

    def encode(self, name: str, value: Any) -> Message:
        """`value` as the message `name`; a `ValueError` saying which field does not fit."""
        message = self.classes[name]()
        data = _plain(value)
        self._fill(message, {"value": data} if name in self.schema.wrappers else data)
        return message

    def _fill(self, message: Message, data: Any) -> None:
        name = type(message).DESCRIPTOR.name
        if not isinstance(data, Mapping):
            raise ValueError(f"{name} needs an object with its fields, got "
                             f"{type(data).__name__}")
        for spec in self.fields[name]:
            value = data.get(spec.name)
            if value is None:
                continue
            try:
                self._set(message, spec, value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}.{spec.name}: {exc}") from None

    def _set(self, message: Message, spec: ProtoField, value: Any) -> None:
        if spec.kind == JSON:
            setattr(message, spec.name, json_bytes(value).decode())
        elif spec.repeated and spec.is_message:
            for item in value:
                self._fill(getattr(message, spec.name).add(), item)
        elif spec.repeated:
            getattr(message, spec.name).extend(value)
        elif spec.is_message:
            getattr(message, spec.name).SetInParent()
            self._fill(getattr(message, spec.name), value)
        else:
            setattr(message, spec.name, value)


def _json(spec: ProtoField, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"field {spec.name} holds JSON ({spec.note}): {exc}") from None


def _plain(value: Any) -> Any:
    """Models as dicts of their fields (by alias; bytes stay bytes), lists and dicts walked."""
    if hasattr(value, "model_dump"):
        return value.model_dump(by_alias=True)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def grpc_status(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and details for an error raised while serving a request."""
    if isinstance(error, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT, error.message
    if isinstance(error, StageTimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(error)
    if isinstance(error, (StageError, PipelineError)):
        return grpc.StatusCode.INTERNAL, str(error)
    return grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"


class GrpcIngress:
    """One graph's gRPC methods: `call` (unary) and `stream` (server streaming), each taking
    the request bytes, Serve's gRPC context (None when called over a handle) and the driver's
    `run` or `stream`. `output_stage` names the stage(s) an output that does not fit its
    message came from; `new_id` makes a request id when the client sent none."""

    def __init__(self, plan: Plan, *, new_id: Callable[[], str] = new_request_id,
                 output_stage: str | None = None, method_prefix: str = "") -> None:
        self.codec = GrpcCodec(proto_schema(plan, method_prefix))
        self.new_id = new_id
        self.output_stage = output_stage

    async def call(self, request: bytes, context: Any, run: Runner) -> Message:
        """The reply; on failure an empty reply with the error's status set on `context`
        (Serve's proxy sends the status, and the client raises it)."""
        metadata = _metadata(context)
        request_id = self._request_id(context, metadata)
        try:
            payload = self.codec.decode(request)
            result = await run(payload, request_id, deadline_s=_deadline(metadata))
        except Exception as exc:
            if context is None:  # over a handle: the caller gets the error itself
                raise
            _fail(context, *grpc_status(exc), request_id)
            return self.codec.classes[self.codec.schema.reply]()
        try:
            return self.codec.reply(result)
        except ValueError as exc:
            stage = f" (from stage {self.output_stage})" if self.output_stage else ""
            _fail(context, grpc.StatusCode.INTERNAL, f"the pipeline's output{stage} does not "
                  f"fit {self.codec.schema.reply}: {exc}", request_id)
            return self.codec.classes[self.codec.schema.reply]()

    async def stream(self, request: bytes, context: Any,
                     stream: Streamer) -> AsyncIterator[Message]:
        """The chunks as messages. A failure sets its status on `context` and raises (Serve
        keeps a status set before the raise; the chunks sent before it stay sent)."""
        request_id = self._request_id(context, _metadata(context))
        try:
            if self.codec.schema.chunk is None:
                raise _Unimplemented(f"graph {self.codec.schema.graph!r} does not stream its "
                                     "output: call Call")
            payload = self.codec.decode(request)
            async for chunk in stream(payload, request_id):
                yield self.codec.chunk(chunk)
        except Exception as exc:
            code, details = ((grpc.StatusCode.UNIMPLEMENTED, str(exc))
                             if isinstance(exc, _Unimplemented) else grpc_status(exc))
            _fail(context, code, details, request_id)
            raise

    def _request_id(self, context: Any, metadata: Mapping[str, str]) -> str:
        request_id = metadata.get(REQUEST_ID, "")[:128] or self.new_id()
        if context is not None:
            context.set_trailing_metadata([(REQUEST_ID, request_id)])
        return request_id


class _Unimplemented(Exception):
    """`Stream` on a graph that does not stream."""


def _metadata(context: Any) -> dict[str, str]:
    return {} if context is None else dict(context.invocation_metadata())


def _deadline(metadata: Mapping[str, str]) -> float | None:
    """The client's budget in seconds (`x-request-timeout`), or `InputError` for one that is
    not a positive number."""
    raw = metadata.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise InputError(f"{TIMEOUT_HEADER}: {raw[:40]!r} is not a positive number of seconds")
    return seconds


def _fail(context: Any, code: grpc.StatusCode, details: str, request_id: str) -> None:
    if code is grpc.StatusCode.INTERNAL or code is grpc.StatusCode.DEADLINE_EXCEEDED:
        logger.warning("request %s: gRPC %s: %s", request_id, code.name, details)
    if context is not None:
        context.set_code(code)
        context.set_details(details[:MAX_DETAILS])


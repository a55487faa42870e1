"""The HTTP request itself as a pipeline's input: `sg.InputNode(sg.HttpRequest)`.

A pipeline whose input model is `HttpRequest` gets the request as it came, not a JSON body
parsed for it: the body's bytes and content type, the multipart files and text fields, the
headers (lower-case names) and the query parameters. Its stages select what they take as from
any input model (`req.body`, `req.files["image"]`, `req.headers["x-tenant"]`), and the
compiler types those selections from the fields below, so a stage annotated `str` bound to
`req.files["image"]` (an `Upload`) fails to compile.

Python clients pass an `HttpRequest` (or a dict of its fields) to `call`/`acall`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["HttpRequest", "Upload", "media_type", "takes_raw_request"]


def media_type(content_type: str) -> str:
    """A content type without its parameters, lower-case: `image/png` of
    `Image/PNG; q=1`, `multipart/form-data` of one with a boundary."""
    return content_type.split(";", 1)[0].strip().lower()


class Upload(BaseModel):
    """One file of a `multipart/form-data` body: its name as the client gave it, the part's
    content type (as sent, parameters included) and its bytes."""

    model_config = ConfigDict(frozen=True)

    filename: str | None = None
    content_type: str = ""
    data: bytes = b""

    @property
    def media_type(self) -> str:
        """`content_type` without its parameters, lower-case."""
        return media_type(self.content_type)


class HttpRequest(BaseModel):
    """The request a raw-input pipeline receives. `body` is the whole body as read (a
    multipart body too: its parts are also in `files` and `form`); `content_type` is the
    header as sent; `headers` has lower-case names (a repeated header's values joined with
    ", "); `query` holds the query parameters (the last value of a repeated one)."""

    model_config = ConfigDict(frozen=True)

    body: bytes = b""
    content_type: str = ""
    headers: dict[str, str] = {}
    query: dict[str, str] = {}
    form: dict[str, str] = {}
    files: dict[str, Upload] = {}

    @property
    def media_type(self) -> str:
        """`content_type` without its parameters, lower-case."""
        return media_type(self.content_type)


HTTP_REQUEST_PATH = f"{HttpRequest.__module__}:{HttpRequest.__qualname__}"


def takes_raw_request(input_model: str | None) -> bool:
    """Whether a plan whose `input_model` is this import path takes the HTTP request itself
    (its ingress builds an `HttpRequest` instead of parsing the body as JSON)."""
    return input_model == HTTP_REQUEST_PATH

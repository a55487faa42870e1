"""Digits from an uploaded PNG: held-out images rendered as PNG decode to the same pixels and
answer as the JSON digits pipeline answers for those pixels, uploaded as a multipart file or
as the raw body, on every executor; each bad upload is a 4xx naming the problem."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest

import servegraph as sg
from servegraph.pipelines import digits, digits_upload
from servegraph.testing import PipelineTester

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
Image = pytest.importorskip("PIL.Image")

HELD_OUT = 20


@pytest.fixture(scope="module")
def images() -> list[list[float]]:
    return digits.load_split().test_images[:HELD_OUT]


@pytest.fixture(scope="module")
def expected(images: list[list[float]]) -> list[Any]:
    """What the JSON digits pipeline answers for the same pixels, one image per request."""
    executor = sg.LocalExecutor(digits.graph)
    return [executor.call({"images": [image]}) for image in images]


def multipart(files: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    request = httpx.Request("POST", "http://x", files=files)
    return request.read(), {"content-type": request.headers["content-type"]}


def png_upload(image: list[float], content_type: str = "image/png"
               ) -> tuple[bytes, dict[str, str]]:
    return multipart({digits_upload.FIELD: ("digit.png", digits_upload.png_of(image),
                                            content_type)})


def same_answer(got: list[Any], want: list[Any]) -> bool:
    """The same label and votes; the confidence to the CNN's float noise across batches."""
    return len(got) == len(want) == 1 and all(
        g["label"] == w["label"] and g["votes"] == w["votes"]
        and g["confidence"] == pytest.approx(w["confidence"], abs=2e-4)
        for g, w in zip(got, want))


def test_held_out_pngs_decode_to_their_pixels() -> None:
    images = digits.load_split().test_images
    for scale in (1, 3, digits_upload.RENDER_SCALE):
        for image in images:
            upload = sg.Upload(content_type="image/png",
                               data=digits_upload.png_of(image, scale))
            assert digits_upload.decode_image(upload) == [image]


def test_colour_and_octet_stream_pngs_decode_too() -> None:
    image = digits.load_split().test_images[0]
    grey = Image.open(io.BytesIO(digits_upload.png_of(image)))
    out = io.BytesIO()
    grey.convert("RGBA").save(out, "PNG")
    upload = sg.Upload(content_type="application/octet-stream", data=out.getvalue())
    assert digits_upload.decode_image(upload) == [image]


def test_the_plan_reads_the_request_and_reuses_the_digits_stages() -> None:
    plan = sg.compile(digits_upload.graph)
    assert plan.input_model == "servegraph.dag.request:HttpRequest"
    assert [stage.name for stage in plan.deployments] == [
        "pick_upload", "decode_image", "preprocess", "Cnn", "LogisticRegressionModel",
        "NearestNeighboursModel", "vote"]


def test_uploaded_pngs_answer_the_right_digits(
        pipeline: PipelineTester, images: list[list[float]], expected: list[Any]) -> None:
    labels = digits.load_split().test_y[:HELD_OUT]
    assert sum(answer[0]["label"] == label for answer, label in zip(expected, labels)) >= 19
    for image, want in zip(images, expected):
        body, headers = png_upload(image)
        response = pipeline.http(digits_upload.graph, content=body, headers=headers)
        assert response.status_code == 200, response.text
        assert same_answer(response.json(), want)
    for image, want in zip(images[:5], expected[:5]):
        for content_type in ("image/png", "application/octet-stream"):
            response = pipeline.http(digits_upload.graph, content=digits_upload.png_of(image),
                                     headers={"content-type": content_type})
            assert response.status_code == 200, response.text
            assert same_answer(response.json(), want)
    request = sg.HttpRequest(body=digits_upload.png_of(images[0]), content_type="image/png")
    assert same_answer(pipeline.run(digits_upload.graph, request), expected[0])


PNG = digits_upload.PNG_SIGNATURE
BAD_UPLOADS = [  # (files or None for a raw body, body, content type, the 422's message)
    ({"image": ("d.png", b"hello", "image/png")}, None, None,
     "the upload is not a PNG image: it does not start with the PNG signature"),
    ({"image": ("d.png", PNG + b"garbage", "image/png")}, None, None,
     "the upload is not a PNG image: cannot identify image file <_io.BytesIO object at"),
    ({"image": ("d.txt", b"7", "text/plain")}, None, None,
     "expected image/png or application/octet-stream, got text/plain"),
    ({"file": ("d.png", PNG, "image/png")}, None, None,
     "no file under the form field 'image' (files sent: file): send the PNG as "
     "`-F image=@digit.png`"),
    (None, b"", "image/png", "the upload is empty: send a PNG image"),
    (None, b"hello", "application/octet-stream",
     "the upload is not a PNG image: it does not start with the PNG signature"),
    (None, b"7", "text/plain", "expected image/png or application/octet-stream, got text/plain"),
    (None, b'{"images": []}', "application/json",
     "expected image/png or application/octet-stream, got application/json"),
]


def test_each_bad_upload_is_a_4xx_naming_the_problem(pipeline: PipelineTester) -> None:
    for files, raw, content_type, message in BAD_UPLOADS:
        if files is not None:
            body, headers = multipart(files)
        else:
            body, headers = raw or b"", {"content-type": content_type or ""}
        response = pipeline.http(digits_upload.graph, content=body, headers=headers)
        assert response.status_code == 422, (message, response.text)
        assert response.json()["error"].startswith(message)
        assert response.json()["request_id"]
    with pytest.raises(sg.InputError, match="expected image/png or application/octet-stream"):
        pipeline.run(digits_upload.graph, {"body": b"7", "content_type": "text/plain"})


def test_an_image_too_large_or_an_oversized_body_is_refused(pipeline: PipelineTester) -> None:
    out = io.BytesIO()
    Image.new("L", (digits_upload.MAX_SIDE + 1, 1)).save(out, "PNG")
    response = pipeline.http(digits_upload.graph, content=out.getvalue(),
                             headers={"content-type": "image/png"})
    assert response.status_code == 422
    assert response.json()["error"] == (
        "the image is 4097x1: send one at most 4096 pixels a side")
    body, headers = multipart({"image": ("d.png", PNG + b"\0" * (11 * 2**20), "image/png")})
    response = pipeline.http(digits_upload.graph, content=body, headers=headers)
    assert response.status_code == 413
    assert response.json()["error"].startswith("the request body is larger than")

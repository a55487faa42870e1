"""Digits from an uploaded PNG: the digits ensemble behind a raw HTTP input.

    with sg.InputNode(sg.HttpRequest) as req:
        upload = pick_upload.bind(req.files, req.body, req.content_type)   # multipart or raw
        images = decode_image.bind(upload)                    # PNG -> 8x8, 0..16 intensities
        pixels = digits.preprocess.bind(images)               # then exactly as `digits`
        ...
        predictions = digits.vote.bind(cnn, logreg, knn)

`curl -F image=@seven.png http://host/digits_upload` (`multipart/form-data`, the file under
the field `image`) or `curl --data-binary @seven.png -H 'content-type: image/png' ...` (or
`application/octet-stream`, recognised by the PNG signature) answers the digit: a list of one
`digits.Prediction`. The image is read as `load_digits` draws digits: a light digit on a dark
ground, any size (averaged down to 8x8), grey levels 0..255 mapped to intensities 0..16.
`png_of` renders `load_digits` pixels so (4x, nearest), and decoding such a PNG gives back the
same pixels exactly.

A body that is not a PNG, a content type other than those, an empty body or a form without
the `image` file is the caller's fault: `sg.InputError`, a 422 naming the problem. A body over
the ingress's limit is a 413 before any stage runs.

`python -m servegraph.pipelines.digits_upload` uploads the held-out images as PNG through the
pipeline on the local executor and prints the ensemble's accuracy.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import numpy as np

import servegraph as sg
from servegraph.dag.request import media_type
from servegraph.pipelines import digits

FIELD = "image"  # the multipart form field that holds the PNG
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ACCEPTED = ("image/png", "application/octet-stream")
SIDE = 8  # load_digits images are 8 x 8
MAX_SIDE = 4096  # a larger PNG is refused before it is decoded (a small file can inflate)
GREY_LEVELS = 255.0
RENDER_SCALE = 4


@sg.deployment(ray_actor_options={"num_cpus": 0.25})
def pick_upload(files: dict[str, sg.Upload], body: bytes, content_type: str) -> sg.Upload:
    """The image: the `image` file of a multipart form, else the body itself with the
    request's content type."""
    if media_type(content_type) != "multipart/form-data":
        return sg.Upload(filename=None, content_type=content_type, data=body)
    upload = files.get(FIELD)
    if upload is None:
        sent = ", ".join(sorted(files)) or "none"
        raise sg.InputError(f"no file under the form field {FIELD!r} (files sent: {sent}): "
                            f"send the PNG as `-F {FIELD}=@digit.png`")
    return upload


@sg.deployment(ray_actor_options={"num_cpus": 0.25})
def decode_image(upload: sg.Upload) -> list[list[float]]:
    """One PNG as `load_digits` pixels: grey, averaged down to 8x8, 0..255 mapped to 0..16
    (rounded: the intensities are whole numbers, as in `load_digits`); a list of one image."""
    from PIL import Image, UnidentifiedImageError

    kind = upload.media_type
    if kind not in ACCEPTED:
        raise sg.InputError(f"expected image/png or application/octet-stream, got "
                            f"{kind or 'no content type'}")
    if not upload.data:
        raise sg.InputError("the upload is empty: send a PNG image")
    if not upload.data.startswith(PNG_SIGNATURE):
        raise sg.InputError("the upload is not a PNG image: it does not start with the PNG "
                            "signature")
    try:
        with Image.open(io.BytesIO(upload.data), formats=["PNG"]) as image:
            if max(image.size) > MAX_SIDE:
                raise sg.InputError(f"the image is {image.size[0]}x{image.size[1]}: send one "
                                    f"at most {MAX_SIDE} pixels a side")
            grey = image.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
            SyntaxError) as exc:
        raise sg.InputError(f"the upload is not a PNG image: {exc}") from None
    levels = np.asarray(grey, dtype=np.float64).reshape(-1)
    return [np.rint(levels * digits.MAX_PIXEL / GREY_LEVELS).tolist()]


def png_of(pixels: list[float], scale: int = RENDER_SCALE) -> bytes:
    """`load_digits` pixels (64 intensities 0..16) as a grey PNG, `scale` times larger
    (nearest): what `decode_image` reads back as the same pixels."""
    from PIL import Image

    levels = np.rint(np.asarray(pixels, dtype=np.float64) * GREY_LEVELS / digits.MAX_PIXEL)
    image = Image.fromarray(levels.astype(np.uint8).reshape(SIDE, SIDE), mode="L")
    out = io.BytesIO()
    image.resize((SIDE * scale, SIDE * scale), Image.Resampling.NEAREST).save(out, "PNG")
    return out.getvalue()


def build_graph() -> sg.Graph:
    with sg.InputNode(sg.HttpRequest) as req:
        upload = pick_upload.bind(req.files, req.body, req.content_type)
        images = decode_image.bind(upload)
        pixels = digits.preprocess.bind(images)
        cnn = digits.Cnn.bind().predict.bind(pixels)
        logreg = digits.LogisticRegressionModel.bind().predict.bind(pixels)
        knn = digits.NearestNeighboursModel.bind().predict.bind(pixels)
        predictions = digits.vote.bind(cnn, logreg, knn)
    return sg.Graph(predictions, name="digits_upload")


graph = build_graph()


def held_out_accuracy(executor: sg.LocalExecutor | None = None, limit: int | None = None
                      ) -> float:
    """The ensemble's accuracy on the held-out images, each uploaded as a PNG."""
    split = digits.load_split()
    executor = executor or sg.LocalExecutor(graph)
    images = split.test_images[:limit]
    labels: list[Any] = [executor.call(sg.HttpRequest(body=png_of(image),
                                                      content_type="image/png"))[0]["label"]
                         for image in images]
    return float(np.mean(np.asarray(labels) == split.test_y[:len(images)]))


def main() -> int:
    score = held_out_accuracy()
    print(f"digits_upload: held-out accuracy from PNG uploads {score:.4f}")
    return 0 if score >= 0.95 else 1


if __name__ == "__main__":
    from servegraph.pipelines.digits_upload import main as package_main

    sys.exit(package_main())

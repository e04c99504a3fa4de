"""schemathesis's hooks (schemathesis.toml loads this module): image files for the format "byte".

In this API's document "byte" is only ever an image file, base64-encoded (the Open Inference
Protocol's `image` elements). schemathesis draws random bytes for it, which no image decoder
reads, so every generated inference request would be refused as "not an image" and the fuzzer
would never get past the decoding step. Here most draws are small real images in every format
the server takes, and the rest random bytes as before.
"""
from __future__ import annotations

import base64
import io

import schemathesis
from hypothesis import strategies as st
from PIL import Image

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")


@st.composite
def image_files(draw) -> bytes:
    """A small image file of one colour, in one of the server's formats."""
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    colour = tuple(draw(st.integers(0, 255)) for _ in range(3))
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, draw(st.sampled_from(FORMATS)))
    return buffer.getvalue()


schemathesis.openapi.format("byte", st.one_of(image_files(), st.binary(min_size=1))
                            .map(lambda data: base64.b64encode(data).decode()))

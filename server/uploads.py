"""Hardened decoding of uploaded bytes, in front of the contract's preprocessing (bundle.preprocess).

Decoding is bounded: the format and the pixel count are read from the header and checked
before any pixel data is decoded, so a decompression bomb costs nothing; every failure is an
ImageError with the HTTP status a client should get.
"""
from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from bundle.preprocess import set_draft, upright_rgb

from .errors import RequestError

SUPPORTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP",
                     "TIFF": "TIFF", "GIF": "GIF"}


# The first bytes of each supported format but BMP (whose two, "BM", begin ordinary text too): a
# file that has them and still cannot be opened is a broken image (422), not another format (415).
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")


def _has_image_signature(data: bytes) -> bool:
    return data.startswith(SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


class ImageError(RequestError):
    """An upload that cannot be captioned."""


def open_image(data: bytes, max_pixels: int, preprocessing: dict | None = None) -> Image.Image:
    """Read an upload's header and check its format and size; no pixel is decoded yet.

    With the bundle's `preprocessing`, a JPEG is set to decode at a reduced scale as the
    contract does everywhere (bundle.preprocess.set_draft): decoding all 12 MP of a photo only to
    shrink it to the model's 299 pixels is wasted work. The returned image's `size` is what
    decoding will make.
    """
    if not data:
        raise ImageError(400, "empty_image", "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(413, "image_too_large", f"the image has more than {max_pixels:,} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        if _has_image_signature(data):
            raise ImageError(422, "invalid_image", "the image data is truncated or corrupt") from None
        raise ImageError(415, "unsupported_media_type",
                         "the file is not an image in a supported format "
                         f"({', '.join(sorted(set(SUPPORTED_FORMATS.values())))})") from None
    if image.format not in SUPPORTED_FORMATS:
        raise ImageError(415, "unsupported_media_type",
                         f"{image.format} images are not supported "
                         f"(use {', '.join(sorted(set(SUPPORTED_FORMATS.values())))})")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(413, "image_too_large",
                         f"the image is {width}x{height} pixels, over the limit of {max_pixels:,} pixels")
    if width < 1 or height < 1:
        raise ImageError(422, "invalid_image", "the image has no pixels")
    try:
        image.seek(0)  # animated GIF/WebP/TIFF: the first frame
        if preprocessing is not None:
            set_draft(image, preprocessing)
    except (OSError, ValueError, SyntaxError, EOFError):
        raise ImageError(422, "invalid_image", "the image data is truncated or corrupt") from None
    return image


def load_rgb(image: Image.Image) -> Image.Image:
    """Decode an opened image's pixels to an upright 8-bit RGB image; ImageError if they are corrupt."""
    try:
        return upright_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        raise ImageError(422, "invalid_image", "the image data is truncated or corrupt") from None


def decode_image(data: bytes, max_pixels: int, preprocessing: dict | None = None) -> Image.Image:
    """Decode an upload to an upright RGB image; raises ImageError for anything else."""
    return load_rgb(open_image(data, max_pixels, preprocessing))

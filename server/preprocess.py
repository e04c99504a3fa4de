"""Uploaded bytes -> the encoder's input, as the bundle's preprocessing says.

Decoding is bounded: the pixel count is read from the header and checked before any pixel
data is decoded, so a decompression bomb costs nothing.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import RequestError

SUPPORTED_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP",
                     "TIFF": "TIFF", "GIF": "GIF"}
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class ImageError(RequestError):
    """An upload that cannot be captioned."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited onto white."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float32)  # half of float64's memory on a 40 MP scan
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")  # convert() would copy an RGB image


def open_image(data: bytes, max_pixels: int, min_side: int = 0) -> Image.Image:
    """Read an upload's header and check its format and size; no pixel is decoded yet.

    A JPEG is set to decode at 1/2, 1/4 or 1/8 scale (DCT scaling, Pillow's draft mode) where
    both sides stay at least `min_side`: decoding all 12 MP of a photo only to shrink it to the
    model's 299 pixels is wasted work. The returned image's `size` is what decoding will make.
    """
    if not data:
        raise ImageError(400, "empty_image", "the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(413, "image_too_large", f"the image has more than {max_pixels:,} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageError(415, "unsupported_media_type",
                         "the upload is not an image in a supported format "
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
        if min_side and image.format in ("JPEG", "MPO"):
            image.draft(image.mode, (min_side, min_side))
    except (OSError, ValueError, SyntaxError, EOFError):
        raise ImageError(422, "invalid_image", "the image data is truncated or corrupt") from None
    return image


def load_rgb(image: Image.Image) -> Image.Image:
    """Decode an opened image's pixels to an upright 8-bit RGB image; ImageError if they are corrupt."""
    try:
        image.load()
        # In place: exif_transpose otherwise copies every image, rotated or not (160 MB at 40 MP).
        ImageOps.exif_transpose(image, in_place=True)
        return _to_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        raise ImageError(422, "invalid_image", "the image data is truncated or corrupt") from None


def decode_image(data: bytes, max_pixels: int, min_side: int = 0) -> Image.Image:
    """Decode an upload to an upright RGB image; raises ImageError for anything else."""
    return load_rgb(open_image(data, max_pixels, min_side))


def to_model_input(image: Image.Image, preprocessing: dict) -> np.ndarray:
    """Resize and scale an RGB image as the manifest says; float32 [H, W, 3]."""
    width, height = preprocessing["resize"]
    resized = image.resize((width, height), RESAMPLE[preprocessing["resample"]])
    return np.asarray(resized, dtype=np.float32) * np.float32(preprocessing["scale"]) + np.float32(preprocessing["offset"])

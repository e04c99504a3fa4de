"""The server's hardened decoding of uploads: every supported format and mode, and a clear
refusal for the rest."""
import io

import numpy as np
import pytest
from PIL import Image

from server.uploads import ImageError, decode_image

LIMIT = 40_000_000
PREPROCESSING = {"resize": [299, 299], "resample": "bilinear", "channels": "RGB", "layout": "NHWC",
                 "scale": 1 / 127.5, "offset": -1.0}


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def red_square(mode="RGB", size=(40, 30)):
    return Image.new("RGB", size, (200, 20, 20)).convert(mode)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_formats_decode_to_rgb(fmt):
    image = decode_image(encode(red_square(), fmt), LIMIT)
    assert image.mode == "RGB" and image.size == (40, 30)
    r, g, b = image.getpixel((20, 15))
    assert r > 150 and g < 80 and b < 80


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "1"])
def test_modes_convert_to_rgb(mode):
    fmt = "TIFF" if mode in ("CMYK", "I") else "PNG"
    image = decode_image(encode(red_square(mode), fmt), LIMIT)
    assert image.mode == "RGB" and image.size == (40, 30)


def test_sixteen_bit_keeps_its_range():
    gradient = np.tile(np.linspace(0, 65535, 64), (8, 1)).astype(np.uint16)
    image = decode_image(encode(Image.fromarray(gradient), "PNG"), LIMIT)
    row = np.asarray(image)[0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row.astype(int)) >= 0)


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert decode_image(encode(rgba, "PNG"), LIMIT).getpixel((5, 5)) == (255, 255, 255)
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    assert decode_image(encode(palette, "PNG", transparency=0), LIMIT).getpixel((5, 5)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    assert decode_image(encode(image, "JPEG", exif=exif), LIMIT).size == (20, 60)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    r, g, _ = decode_image(buffer.getvalue(), LIMIT).getpixel((8, 8))
    assert r > 200 and g < 50


@pytest.mark.parametrize("data, status, code", [
    (b"", 400, "empty_image"),
    (b"GIF89a but not really", 422, "invalid_image"),  # a GIF's signature: a broken GIF, not another format
    (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", 415, "unsupported_media_type"),
    (b"hello, I am text", 415, "unsupported_media_type"),
])
def test_non_images_are_refused(data, status, code):
    with pytest.raises(ImageError) as info:
        decode_image(data, LIMIT)
    assert (info.value.status, info.value.code) == (status, code)


def test_unsupported_pillow_format_is_415():
    with pytest.raises(ImageError) as info:
        decode_image(encode(red_square(), "PPM"), LIMIT)
    assert info.value.status == 415 and "PPM" in info.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "GIF"])
@pytest.mark.parametrize("keep", [12, 300, 0.5])
def test_a_truncated_image_is_422_wherever_it_is_cut(fmt, keep):
    """Cut inside its header or its pixels, an image is a broken image (it was 415 when the header
    was cut, as if it were another format)."""
    data = encode(Image.effect_noise((256, 256), 50).convert("RGB"), fmt)
    cut = data[: int(len(data) * keep) if isinstance(keep, float) else keep]
    with pytest.raises(ImageError) as info:
        decode_image(cut, LIMIT)
    assert (info.value.status, info.value.code) == (422, "invalid_image")


def test_pixel_limit_is_checked_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "PNG")  # 9 MP that compresses to a few kB
    assert len(data) < 100_000
    with pytest.raises(ImageError) as info:
        decode_image(data, max_pixels=4_000_000)
    assert info.value.status == 413 and "3000x3000" in info.value.message
    assert decode_image(data, max_pixels=9_000_000).size == (3000, 3000)


def test_large_jpegs_are_draft_decoded_but_never_below_twice_the_model_input():
    data = encode(Image.new("RGB", (4000, 3000), (10, 120, 200)), "JPEG")
    full = decode_image(data, LIMIT)
    draft = decode_image(data, LIMIT, PREPROCESSING)
    assert full.size == (4000, 3000)
    assert draft.size == (1000, 750) and min(draft.size) >= 598
    assert decode_image(encode(Image.new("RGB", (640, 480)), "JPEG"), LIMIT, PREPROCESSING).size == (640, 480)
    assert decode_image(encode(Image.new("RGB", (4000, 3000)), "PNG"), LIMIT, PREPROCESSING).size == (4000, 3000)

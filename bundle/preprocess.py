"""The one preprocessing function: a decoded image -> the encoder's input, as bundle.json says.

Training, export parity and the server all call these functions, so a model is never served
with other pixels than it was trained and checked on. The manifest's `preprocessing`:
  resize     [width, height] of the encoder's input
  resample   "nearest" | "bilinear" | "bicubic" (Pillow's filters; keras.utils.load_img uses nearest)
  channels   "RGB" | "BGR"   order of the channels fed to the encoder
  layout     "NHWC" | "NCHW"
  scale, offset  input = pixel * scale + offset, pixel in 0..255 in the `channels` order; each a
                 number or one per channel ("caffe" mode is BGR, scale 1, offset -mean)
  jpeg_draft     optional, default true: decode large JPEGs at a reduced scale (see DRAFT_FACTOR);
                 false decodes every pixel, as keras.utils.load_img does
The server's hardened decoding of uploads (limits, formats) stays in the server, in front of this.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC}
CHANNELS = ("RGB", "BGR")
LAYOUTS = ("NHWC", "NCHW")
# A JPEG is decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft mode) where both sides stay at least
# this many times the model's input: on 2400x2400 uploads of held-out scenes, twice the input
# kept 97/100 greedy captions identical to a full decode (1x kept 85/100) and cut decoding from
# 52 to 7.5 ms.
DRAFT_FACTOR = 2


def preprocessing_problems(preprocessing: dict) -> list[str]:
    """What is wrong with a manifest's `preprocessing` (an empty list when it can be applied)."""
    p = preprocessing if isinstance(preprocessing, dict) else {}
    problems = []
    resize = p.get("resize")
    if not (isinstance(resize, list) and len(resize) == 2 and all(isinstance(v, int) and v > 0 for v in resize)):
        problems.append(f"resize {resize!r} is not [width, height]")
    for key, choices in (("resample", tuple(RESAMPLE)), ("channels", CHANNELS), ("layout", LAYOUTS)):
        if p.get(key, choices[0] if key != "resample" else None) not in choices:
            problems.append(f"{key} {p.get(key)!r} is not one of {', '.join(choices)}")
    if not isinstance(p.get("jpeg_draft", True), bool):
        problems.append(f"jpeg_draft {p.get('jpeg_draft')!r} is not true or false")
    for key in ("scale", "offset"):
        value = p.get(key)
        if not (isinstance(value, (int, float)) or (isinstance(value, list) and len(value) == 3
                                                    and all(isinstance(v, (int, float)) for v in value))):
            problems.append(f"{key} {value!r} is not a number or one number per channel")
    return problems


def input_shape(preprocessing: dict) -> tuple[int, int, int]:
    """One image's encoder input shape, without the batch axis."""
    width, height = preprocessing["resize"]
    return (3, height, width) if preprocessing.get("layout", "NHWC") == "NCHW" else (height, width, 3)


def to_rgb(image: Image.Image) -> Image.Image:
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


def set_draft(image: Image.Image, preprocessing: dict) -> None:
    """Before its pixels are decoded: a JPEG is set to decode at the smallest DCT scale that
    keeps both sides at least DRAFT_FACTOR times the model's input. Its `size` becomes what
    decoding will make."""
    if image.format in ("JPEG", "MPO") and preprocessing.get("jpeg_draft", True):
        side = DRAFT_FACTOR * max(preprocessing["resize"])
        image.draft(image.mode, (side, side))


def upright_rgb(image: Image.Image) -> Image.Image:
    """Decode an opened image's pixels, turned upright (EXIF orientation), as 8-bit RGB."""
    image.load()
    # In place: exif_transpose otherwise copies every image, rotated or not (160 MB at 40 MP).
    ImageOps.exif_transpose(image, in_place=True)
    return to_rgb(image)


def _per_channel(value) -> np.ndarray:
    value = np.asarray(value, dtype=np.float32)  # a number, or one per channel in the `channels` order
    return value if value.ndim == 0 else value.reshape(3)


def to_model_input(image: Image.Image, preprocessing: dict) -> np.ndarray:
    """Resize, order and scale an RGB image as the manifest says; float32 in `input_shape`."""
    width, height = preprocessing["resize"]
    pixels = np.asarray(image.resize((width, height), RESAMPLE[preprocessing["resample"]]), dtype=np.float32)
    if preprocessing.get("channels", "RGB") == "BGR":
        pixels = pixels[..., ::-1]
    pixels = pixels * _per_channel(preprocessing["scale"]) + _per_channel(preprocessing["offset"])
    if preprocessing.get("layout", "NHWC") == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels, dtype=np.float32)


def load_image(path: Path, preprocessing: dict) -> np.ndarray:
    """An image file as the encoder's input: the same decoding and preprocessing the server applies."""
    with Image.open(path) as image:
        image.seek(0)  # animated GIF/WebP/TIFF: the first frame, as the server takes
        set_draft(image, preprocessing)
        return to_model_input(upright_rgb(image), preprocessing)


# keras.applications' preprocess_input modes: "torch" mean and std (RGB, of pixels in [0, 1]) and
# "caffe" means (BGR, of pixels in 0..255), as keras.applications.imagenet_utils has them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
KERAS_MODES = ("tf", "caffe", "torch", "raw")


def keras_preprocessing(mode: str, image_size: int, resample: str = "nearest") -> dict:
    """The manifest preprocessing equal to keras.utils.load_img(target_size=(image_size,) * 2), which
    resizes with nearest-neighbour by default and decodes every pixel, then preprocess_input(mode):
    "tf" scales to [-1, 1]; "caffe" is BGR with the ImageNet means subtracted; "torch" is RGB in
    [0, 1] standardised by the ImageNet mean and std; "raw" leaves 0..255 (models that rescale
    inside, such as EfficientNet)."""
    common = {"resize": [image_size, image_size], "resample": resample, "layout": "NHWC", "jpeg_draft": False}
    if mode == "tf":
        return {**common, "channels": "RGB", "scale": 1 / 127.5, "offset": -1.0}
    if mode == "caffe":
        return {**common, "channels": "BGR", "scale": 1.0, "offset": [-m for m in CAFFE_BGR_MEAN]}
    if mode == "torch":
        return {**common, "channels": "RGB", "scale": [1 / (255 * s) for s in IMAGENET_STD],
                "offset": [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]}
    if mode == "raw":
        return {**common, "channels": "RGB", "scale": 1.0, "offset": 0.0}
    raise ValueError(f"preprocessing mode {mode!r} is not one of {', '.join(KERAS_MODES)}")

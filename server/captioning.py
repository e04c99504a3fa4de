"""Request-level captioning shared by the API and the web form: uploads in, captions out."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .engine import CaptionEngine
from .errors import RequestError
from .preprocess import ImageError, decode_image, to_model_input


@dataclass
class Options:
    beam_size: int
    max_length: int


def parse_options(values, config, max_length_limit: int) -> Options:
    """beam_size and max_length from query/form values, validated against the configuration."""
    def integer(name: str, default: int, low: int, high: int) -> int:
        raw = values.get(name)
        if raw is None or str(raw).strip() == "":
            return default
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise RequestError(422, "invalid_parameter", f"{name} must be an integer, got {str(raw)[:40]!r}") from None
        if not low <= value <= high:
            raise RequestError(422, "invalid_parameter", f"{name} must be between {low} and {high}, got {value}")
        return value

    return Options(beam_size=integer("beam_size", config.default_beam_size, 1, config.max_beam_size),
                   max_length=integer("max_length", max_length_limit, 1, max_length_limit))


def decode_uploads(uploads: list[bytes], config, min_side: int = 0) -> list:
    """Decode every upload to an RGB image, in order; the first bad one fails the request."""
    if not uploads:
        raise RequestError(400, "missing_image", "send an image: a multipart field 'image' or an image request body")
    if len(uploads) > config.max_images:
        raise RequestError(413, "too_many_images", f"at most {config.max_images} images per request, got {len(uploads)}")
    images = []
    for index, data in enumerate(uploads):
        try:
            images.append(decode_image(data, config.max_pixels, min_side))
        except ImageError as exc:
            prefix = f"image {index + 1}: " if len(uploads) > 1 else ""
            raise RequestError(exc.status, exc.code, prefix + exc.message) from None
    return images


def draft_side(engine: CaptionEngine) -> int:
    """The smallest side a JPEG is draft-decoded to: twice the model input.

    On 2400x2400 uploads of held-out scenes that kept 97/100 greedy captions identical to a full
    decode (1x kept 85/100) and cut preprocessing from 52 to 7.5 ms.
    """
    return 2 * max(engine.preprocessing["resize"])


def best_caption(engine: CaptionEngine, beams) -> dict:
    """The best hypothesis of one image as the API reports it: caption, tokens, log_prob."""
    words = engine.words(beams[0].tokens)
    return {"caption": " ".join(words), "tokens": words, "log_prob": round(beams[0].log_prob, 6)}


def caption_uploads(engine: CaptionEngine, uploads: list[bytes], options: Options, config, caption=None) -> dict:
    """Caption every upload in order, with `caption` (engine.caption unless given: a MicroBatcher's).
    Returns JSON-ready captions (best beam), every beam, timings in ms, and the decoded images."""
    started = time.perf_counter()
    images = decode_uploads(uploads, config, draft_side(engine))
    batch = np.stack([to_model_input(image, engine.preprocessing) for image in images])
    preprocessed = time.perf_counter()
    result = (caption or engine.caption)(batch, options.beam_size, options.max_length, config.length_penalty)
    captions = [best_caption(engine, beams) for beams in result.hypotheses]
    timings = {"preprocess": (preprocessed - started) * 1e3, **result.timings_ms,
               "total": (time.perf_counter() - started) * 1e3}
    return {"captions": captions,
            "beams": [[{"caption": " ".join(engine.words(h.tokens)), "log_prob": h.log_prob, "score": h.score}
                       for h in beams] for beams in result.hypotheses],
            "timings_ms": {k: round(v, 3) for k, v in timings.items()},
            "images": images}

"""Request-level captioning shared by the API and the web form: uploads in, captions out.

A request's images are decoded in a native thread (never on the event loop), one at a time,
each shrunk to the model's input before the next is decoded, within a pixel budget per request
that is checked from the headers before any pixel is decoded.
"""
from __future__ import annotations

import io
import re
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bundle.preprocess import to_model_input

from . import observability as metrics
from . import tracing
from .batching import BatchLimits, MicroBatcher, off_event_loop
from .engine import CaptionEngine
from .errors import RequestError
from .uploads import ImageError, load_rgb, open_image

PREVIEW_SIZE = (640, 640)
# The values /openapi.json states, as OpenAPI writes them in a query or a form: anything else is refused
# (no spaces, no "1" for true), so a client never learns that a value the document forbids happens to work.
INTEGER = re.compile(r"^-?[0-9]+$")
BOOLEANS = {"true": True, "false": False}
DECIMAL = re.compile(r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")
MAX_LENGTH_PENALTY = 5.0


@dataclass
class Options:
    beam_size: int
    max_length: int
    timeout_s: float
    length_penalty: float
    attention: bool = False


def parse_options(values, config, max_length_limit: int) -> Options:
    """beam_size, max_length, length_penalty, timeout_ms and attention from query/form values,
    validated against the configuration."""
    def number(name: str, default, low, high, kind=int):
        # Every value counts (query and form both, or a name repeated): a bad one is refused, not shadowed.
        checked = []
        for text in values.getlist(name):
            # int() and float() also take " 3", "+3", "1_0", "nan" and non-ASCII digits.
            if not (INTEGER if kind is int else DECIMAL).match(text):
                noun = "an integer" if kind is int else "a decimal number"
                raise RequestError(422, "invalid_parameter", f"{name} must be {noun}, got {text[:40]!r}")
            value = kind(text) if len(text) <= 24 else (low - 1 if text.startswith("-") else high + 1)
            if not low <= value <= high:
                raise RequestError(422, "invalid_parameter",
                                   f"{name} must be between {low:g} and {high:g}, got {text[:40]}")
            checked.append(value)
        return checked[0] if checked else default

    def flag(name: str) -> bool:
        checked = []
        for text in values.getlist(name):
            if text not in BOOLEANS:
                raise RequestError(422, "invalid_parameter", f"{name} must be true or false, got {text[:40]!r}")
            checked.append(BOOLEANS[text])
        return checked[0] if checked else False

    timeout_limit_ms = int(config.request_timeout_s * 1000)
    return Options(beam_size=number("beam_size", config.default_beam_size, 1, config.max_beam_size),
                   max_length=number("max_length", max_length_limit, 1, max_length_limit),
                   timeout_s=number("timeout_ms", timeout_limit_ms, 1, timeout_limit_ms) / 1e3,
                   length_penalty=number("length_penalty", config.length_penalty, 0.0, MAX_LENGTH_PENALTY, float),
                   attention=flag("attention"))


def preview_of(image) -> bytes:
    """A small JPEG of an upload, for the web form."""
    thumbnail = image.copy()
    thumbnail.thumbnail(PREVIEW_SIZE)
    buffer = io.BytesIO()
    thumbnail.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def sample_upload(image_format: str) -> bytes:
    """A 640x480 photo-sized image file (a noisy gradient), for warming up the upload path."""
    ramp = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None]
    noise = np.random.default_rng(0).integers(0, 32, (480, 640, 3))
    pixels = np.clip(ramp + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format)
    return buffer.getvalue()


def preprocess_uploads(uploads: list[bytes], config, engine: CaptionEngine, previews: bool = False):
    """Every upload as the model's input, in order, and (when asked) a preview JPEG of each.

    The first bad upload fails the request; so does a request whose images together would
    decode to more than `config.max_request_pixels`, before any of them is decoded.
    """
    if not uploads:
        raise RequestError(400, "missing_image", "send an image: a multipart field 'image' or an image request body")
    if len(uploads) > config.max_images:
        raise RequestError(413, "too_many_images", f"at most {config.max_images} images per request, got {len(uploads)}")

    def labelled(index: int, exc: ImageError) -> RequestError:
        prefix = f"image {index + 1}: " if len(uploads) > 1 else ""
        return RequestError(exc.status, exc.code, prefix + exc.message)

    opened = []
    for index, data in enumerate(uploads):
        try:
            opened.append(open_image(data, config.max_pixels, engine.preprocessing))
        except ImageError as exc:
            raise labelled(index, exc) from None
    pixels = sum(image.size[0] * image.size[1] for image in opened)
    if pixels > config.max_request_pixels:
        raise RequestError(413, "request_too_large",
                           f"the images decode to {pixels:,} pixels together, over the limit of "
                           f"{config.max_request_pixels:,} per request; send them in several requests")
    inputs, shown = [], []
    for index in range(len(opened)):
        image, opened[index] = opened[index], None  # the full-size image is freed once it is shrunk
        try:
            rgb = load_rgb(image)
        except ImageError as exc:
            raise labelled(index, exc) from None
        inputs.append(to_model_input(rgb, engine.preprocessing))
        if previews:
            shown.append(preview_of(rgb))
        del rgb, image
    return np.stack(inputs), shown


def best_caption(engine: CaptionEngine, beams) -> dict:
    """The best hypothesis of one image as the API reports it: caption, tokens, log_prob and,
    when it was asked for, each word's attention over the grid (row-major, 4 decimals)."""
    best = beams[0]
    words = engine.words(best.tokens)
    caption = {"caption": " ".join(words), "tokens": words, "log_prob": round(best.log_prob, 6)}
    if best.attention is not None:
        # Special tokens (<unk>) are not words: their rows go with them.
        rows = [row for token, row in zip(best.tokens, best.attention) if engine.words([token])]
        caption["attention"] = {"grid": list(engine.bundle.attention_grid),
                                "weights": [[round(float(w), 4) for w in row] for row in rows]}
    return caption


class ServedModel:
    """One served model behind the routes: its engine, its queue, and the request's whole path
    from uploaded bytes to JSON-ready captions."""

    def __init__(self, engine: CaptionEngine, config, preprocess_slots: threading.Semaphore):
        self.engine, self.config = engine, config
        self.batcher = MicroBatcher(engine, BatchLimits.from_config(config))
        self.preprocess_slots = preprocess_slots
        self.clock = self.batcher.clock

    def options(self, values) -> Options:
        """A request's decoding options (beam_size, max_length, length_penalty, timeout_ms, attention) for this model."""
        return parse_options(values, self.config, self.engine.max_length)

    def _preprocess(self, uploads: list[bytes], deadline: float, previews: bool):
        """preprocess_uploads in a native thread, once a decoding slot is free, within the deadline."""
        with tracing.stage("decode images", **{"caption.images": len(uploads)}):
            if not self.preprocess_slots.acquire(timeout=max(0.0, deadline - self.clock())):
                raise self.batcher.deadline_passed("the server is busy decoding other uploads; retry later")
            try:
                batch, shown = off_event_loop(lambda: preprocess_uploads(uploads, self.config, self.engine, previews))
            finally:
                self.preprocess_slots.release()
        if self.clock() >= deadline:
            raise self.batcher.deadline_passed("the request passed its deadline while its images were decoded; "
                                               "retry later")
        return batch, shown

    def caption_uploads(self, uploads: list[bytes], options: Options, started: float,
                        connected=lambda: True, previews: bool = False) -> dict:
        """Caption every upload in order. `started` (on time.perf_counter's clock) begins the
        request's deadline. Returns JSON-ready captions (best beam), every beam, timings in ms
        and, when asked, preview JPEGs."""
        deadline = started + options.timeout_s
        if options.attention and not self.engine.has_attention:
            raise RequestError(422, "no_attention", f"model {self.engine.bundle.name!r} cannot show where it looked: "
                                                    "its decoder reads the pooled image (no attention), or its bundle "
                                                    "was exported without the step's attention weights")
        self.batcher.reserve(len(uploads))  # a full queue refuses before anything is decoded
        try:
            batch, shown = self._preprocess(uploads, deadline, previews)
        except BaseException:
            self.batcher.release(len(uploads))
            raise
        preprocessed = self.clock()
        result = self.batcher.caption(batch, options.beam_size, options.max_length, options.length_penalty,
                                      deadline=deadline, connected=connected, reserved=True,
                                      attention=options.attention)
        engine = self.engine
        timings = {"preprocess": (preprocessed - started) * 1e3, **result.timings_ms,
                   "total": (self.clock() - started) * 1e3}
        metrics.observe_stages({"preprocess": timings["preprocess"], "total": timings["total"]})
        return {"captions": [best_caption(engine, beams) for beams in result.hypotheses],
                "beams": [[{"caption": " ".join(engine.words(h.tokens)), "log_prob": h.log_prob, "score": h.score}
                           for h in beams] for beams in result.hypotheses],
                "timings_ms": {k: round(v, 3) for k, v in timings.items()},
                "previews": shown}

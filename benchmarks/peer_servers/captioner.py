"""What every peer server runs: encoded image files in, greedy captions out, through the same
CaptionEngine, engine settings and upload decoding as this server's default path."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bundle.format import load_bundle
from bundle.preprocess import to_model_input
from server.engine import CaptionEngine, EngineOptions
from server.uploads import decode_image

MAX_PIXELS = 40_000_000  # the server's default per-image limit (CAPTION_MAX_PIXELS)


class Captioner:
    """A bundle's engine with the server's default options (CPU, all cores for the encoder)."""

    def __init__(self, bundle: Path | str | None = None):
        self.engine = CaptionEngine(load_bundle(Path(bundle or os.environ.get("CAPTION_BUNDLE", "onnx_models/demo"))),
                                    EngineOptions())

    def inputs(self, image: bytes) -> np.ndarray:
        """One image file as the encoder's input, decoded as the server decodes uploads."""
        preprocessing = self.engine.preprocessing
        return to_model_input(decode_image(image, MAX_PIXELS, preprocessing), preprocessing)

    def captions(self, inputs: list[np.ndarray]) -> list[str]:
        """Greedy captions of a batch of preprocessed images, in order."""
        result = self.engine.caption(np.stack(inputs))
        return [" ".join(self.engine.words(beams[0].tokens)) for beams in result.hypotheses]

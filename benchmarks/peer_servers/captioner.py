"""What every peer server runs: encoded image files in, greedy captions out, through the same
CaptionEngine, with the engine settings this server would take from the same environment
(CAPTION_BUNDLE, CAPTION_PROVIDERS, ...: server/config.py) and the same upload decoding."""
from __future__ import annotations

import numpy as np

from bundle.format import load_bundle
from bundle.preprocess import to_model_input
from server.config import Config
from server.path_choice import engine_for
from server.uploads import decode_image


class Captioner:
    """The configured bundle's engine, as this server's worker would build it."""

    def __init__(self):
        config = Config.from_env()
        self.max_pixels = config.max_pixels
        self.engine = engine_for(load_bundle(config.bundle), config)

    def inputs(self, image: bytes) -> np.ndarray:
        """One image file as the encoder's input, decoded as the server decodes uploads."""
        preprocessing = self.engine.preprocessing
        return to_model_input(decode_image(image, self.max_pixels, preprocessing), preprocessing)

    def captions(self, inputs: list[np.ndarray]) -> list[str]:
        """Greedy captions of a batch of preprocessed images, in order."""
        result = self.engine.caption(np.stack(inputs))
        return [" ".join(self.engine.words(beams[0].tokens)) for beams in result.hypotheses]

"""Captioning image files in batches with the server's engine: the rows both the `caption` command
and its Ray jobs write."""
from __future__ import annotations

import numpy as np

from bundle.preprocess import to_model_input
from server.captioning import best_caption
from server.engine import CaptionEngine
from server.uploads import ImageError, decode_image

from .image_files import read_bytes


def caption_files(engine: CaptionEngine, paths: list[str], max_pixels: int, beam_size: int, length_penalty: float,
                  batch_size: int, read=read_bytes, attention: bool = False):
    """Yield one list of rows per batch of image files: {"path", "caption", "tokens", "log_prob"}
    (and with `attention`, each word's weights as the API gives them), or {"path", "error"} for a
    file that cannot be captioned (the others still are).
    `read(path) -> bytes` fetches each file (local paths or pyarrow URIs by default)."""
    for first in range(0, len(paths), batch_size):
        rows, inputs, good = [], [], []
        for path in map(str, paths[first:first + batch_size]):
            try:
                image = decode_image(read(path), max_pixels, engine.preprocessing)
                inputs.append(to_model_input(image, engine.preprocessing))
                good.append(len(rows))
                rows.append({"path": path})
            except ImageError as exc:
                rows.append({"path": path, "error": exc.message})
            except OSError as exc:
                rows.append({"path": path, "error": exc.strerror or str(exc)})
        if inputs:
            result = engine.caption(np.stack(inputs), beam_size, engine.max_length, length_penalty, attention)
            for index, beams in zip(good, result.hypotheses):
                rows[index].update(best_caption(engine, beams))
        yield rows

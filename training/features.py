"""Encoder features of a dataset's images, preprocessed by the contract (bundle.preprocess) as the
server will, and cached on disk."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bundle.format import FORMAT
from bundle.preprocess import load_image


def weights_digest(model) -> str:
    """sha256 of a model's weights, so cached features follow the weights, not their name."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def _cache_key(paths: list[Path], encoder_id: str) -> str:
    digest = hashlib.sha256(encoder_id.encode())
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def extract_features(encoder, paths: list[Path], preprocessing: dict,
                     cache_dir: Path | None = None, batch_size: int = 16) -> np.ndarray:
    """Encoder features for `paths`, [N, *encoder output] float32, read from / written to `cache_dir`.

    The cache is keyed on the encoder's weights, the preprocessing and the files, so a
    different encoder or a changed image never reuses stale features.
    """
    cache = None
    if cache_dir is not None:
        # The output shape tells the pooled encoder from the map of the same weights; the format pins the preprocessing code.
        encoder_id = weights_digest(encoder) + str(encoder.output_shape) + json.dumps(preprocessing) + FORMAT
        cache = Path(cache_dir) / f"features-{_cache_key(paths, encoder_id)}.npy"
        if cache.exists():
            return np.load(cache)
    import tensorflow as tf

    # A traced graph, not eager calls: 30 ms an image instead of 47 on 2 cores (batch 16).
    encode = tf.function(lambda images: encoder(images, training=False), reduce_retracing=True)
    chunks = []
    with tqdm(total=len(paths), desc="encoding images", unit="img") as bar:
        for start in range(0, len(paths), batch_size):
            batch = np.stack([load_image(p, preprocessing) for p in paths[start:start + batch_size]])
            chunks.append(np.asarray(encode(batch), dtype=np.float32))
            bar.update(len(batch))
    features = np.concatenate(chunks) if chunks else np.zeros((0, *encoder.output_shape[1:]), np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, features)
    return features

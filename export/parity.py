"""Parity of the exported graphs with Keras: max |ONNX - Keras| per output on random and real
inputs, and identical greedy captions on held-out images. Every mismatch is collected and
reported together in one ParityError."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

from .specs import GraphSpec


class ParityError(RuntimeError):
    """The exported model does not reproduce the Keras model."""


def load_image(path: Path, preprocessing: dict) -> np.ndarray:
    """The image as the manifest's preprocessing describes it (float32 [H, W, 3])."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        image = image.resize(tuple(preprocessing["resize"]), Image.Resampling[preprocessing["resample"].upper()])
    return np.asarray(image, dtype=np.float32) * preprocessing["scale"] + preprocessing["offset"]


def random_inputs(spec: GraphSpec, batch: int, rng: np.random.Generator, vocab_size: int,
                  feature_scale: np.ndarray) -> dict:
    """Inputs in each tensor's working range: images in [-1, 1], states in (-1, 1), any token,
    and features (non-negative pooled activations) between 0 and twice `feature_scale`."""
    feeds = {}
    for t in spec.inputs:
        shape = (batch, *t.shape[1:])
        if t.dtype == "int32":
            feeds[t.name] = rng.integers(0, vocab_size, size=shape, dtype=np.int32)
        elif t.name == "features":
            feeds[t.name] = (feature_scale * rng.uniform(0, 2, size=shape)).astype(np.float32)
        else:
            feeds[t.name] = rng.uniform(-1, 1, size=shape).astype(np.float32)
    return feeds


def compare(keras_model, session: ort.InferenceSession, spec: GraphSpec, feeds: dict) -> dict[str, tuple[float, bool]]:
    """For each output on one batch: (max |ONNX - Keras|, within tolerance). Tolerance is
    numpy.allclose's: |diff| <= atol + rtol * |keras|, so large activations get float32 slack."""
    inputs = [feeds[t.name] for t in spec.inputs]
    keras_out = keras_model(inputs if len(inputs) > 1 else inputs[0], training=False)
    keras_out = keras_out if isinstance(keras_out, (list, tuple)) else [keras_out]
    onnx_out = session.run([t.name for t in spec.outputs], feeds)
    result = {}
    for t, k, o in zip(spec.outputs, keras_out, onnx_out):
        k = np.asarray(k)
        result[t.name] = (float(np.max(np.abs(k - o))), bool(np.allclose(o, k, rtol=spec.rtol, atol=spec.atol)))
    return result


def onnx_greedy(sessions: dict, images: np.ndarray, special: dict, max_length: int) -> list[list[int]]:
    """Greedy token ids with onnxruntime alone (stops at <end> or max_length)."""
    (features,) = sessions["encoder"].run(["features"], {"image": images})
    return greedy_from_features(sessions, features, special, max_length)


def greedy_from_features(sessions: dict, features: np.ndarray, special: dict, max_length: int) -> list[list[int]]:
    """Greedy token ids from encoder features, with the decoder graphs of `sessions`."""
    h, c, context = sessions["decoder_init"].run(["h", "c", "context"], {"features": features})
    tokens = np.full((len(features), 1), special["start"], dtype=np.int32)
    out = [[] for _ in features]
    done = np.zeros(len(features), dtype=bool)
    for _ in range(max_length):
        log_probs, h, c = sessions["decoder_step"].run(None, {"token": tokens, "h": h, "c": c, "context": context})
        tokens = log_probs.argmax(-1).astype(np.int32)[:, None]
        for i, token in enumerate(tokens[:, 0]):
            if not done[i]:
                done[i] = token == special["end"]
                if not done[i]:
                    out[i].append(int(token))
        if done.all():
            break
    return out

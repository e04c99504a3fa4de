"""The encoder's learned part: a small network on the frozen InceptionV3 trunk, trained with the decoder.

It reads two of the trunk's maps: an early one (`tap`, by default mixed2, 35x35x288), which still
holds the fine detail that tells a circle's outline from a square's, and the last (mixed10, 8x8x2048).
Two strided convolutions bring the early map down to the 8x8 grid, a 1x1 convolution projects the
last, and the two are joined as the attention decoder's 64 positions. Both maps are computed on the
way through the trunk anyway, so the learned part adds only its own convolutions (conv_macs).

Exported inside the encoder graph (learned_encoder), so a bundle's contract stays image -> features.
On synthetic scenes an optional auxiliary loss (cell_truth) teaches each position what covers it.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers
from PIL import Image

from .synthetic import COLOURS, SHAPES, SIZES

# What the auxiliary loss asks of each position: (name, classes), class 0 being "no object here".
CELL_TARGETS = (("shape", len(SHAPES) + 1), ("colour", len(COLOURS) + 1), ("size", len(SIZES) + 1))


def map_statistics(maps: np.ndarray, rows: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance of a map [N, H, W, C] over images and positions (a strided
    sample of at most `rows` positions, computed in float32 from the float16 cache).

    A random trunk has near-dead channels (std 1e-6 where the median is 1e-3): standardising them
    would blow float32 round-off up into noise as large as the signal, so every channel's std is at
    least a tenth of the median channel's. Onnxruntime and TensorFlow then agree on the features to
    about 1e-4 of their spread, as the live channels' own round-off allows."""
    flat = maps.reshape(-1, maps.shape[-1])
    sample = flat[::max(1, len(flat) // rows)].astype(np.float32)
    std = sample.std(0)
    floor = max(0.1 * float(np.median(std)), 1e-12)
    return sample.mean(0), np.square(np.maximum(std, floor))


def build_adapter(tap_maps: np.ndarray, top_maps: np.ndarray, channels: int = 128) -> keras.Model:
    """The learned part: ([tap map, last map]) -> [positions, 2 * channels] features, each map
    standardised per channel by the statistics of the training maps given here."""
    tap_in = keras.Input(tap_maps.shape[1:], name="tap_map")
    top_in = keras.Input(top_maps.shape[1:], name="top_map")
    grid = top_maps.shape[1:3]
    tap_mean, tap_variance = map_statistics(tap_maps)
    tap = layers.Normalization(mean=tap_mean, variance=tap_variance, name="tap_norm")(tap_in)
    tap = layers.Conv2D(channels * 3 // 4, 1, activation="relu", name="tap_reduce")(tap)
    while tap.shape[1] > grid[0]:  # 35 -> 17 -> 8: 3x3 windows, stride 2, no padding (as InceptionV3 reduces)
        tap = layers.Conv2D(channels, 3, strides=2, activation="relu", name=f"tap_down{tap.shape[1]}")(tap)
    if tuple(tap.shape[1:3]) != tuple(grid):
        raise ValueError(f"the tapped map comes down to {tuple(tap.shape[1:3])}, not the last map's {tuple(grid)}")
    top_mean, top_variance = map_statistics(top_maps)
    top = layers.Normalization(mean=top_mean, variance=top_variance, name="top_norm")(top_in)
    top = layers.Conv2D(channels, 1, activation="relu", name="top_project")(top)
    joined = layers.Concatenate(name="joined")([tap, top])
    features = layers.Reshape((grid[0] * grid[1], 2 * channels), name="positions")(joined)
    return keras.Model([tap_in, top_in], features, name="learned")


def learned_encoder(trunk: keras.Model, adapter: keras.Model) -> keras.Model:
    """image -> features: the frozen trunk and the learned part as one model, for export."""
    image = keras.Input(trunk.input.shape[1:], name="image")
    return keras.Model(image, adapter(trunk(image)), name="inception_v3_learned")


def conv_macs(model: keras.Model) -> int:
    """Multiply-adds of a model's convolutions for one image, nested models included (the rest of
    InceptionV3 and of the learned part is pooling, normalisation and activations)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += conv_macs(layer)
        elif isinstance(layer, layers.Conv2D):
            _, height, width, out_channels = layer.output.shape
            kernel_h, kernel_w = layer.kernel_size
            total += height * width * out_channels * kernel_h * kernel_w * layer.input.shape[-1]
    return int(total)


def cell_truth(images: list, scenes: dict, grid: int = 8) -> np.ndarray:
    """[N, grid * grid, 3] int32: for each cell of the stretched frame, the (shape, colour, size)
    class of the object whose outline covers the cell's centre, 0 where none does."""
    truth = np.zeros((len(images), grid * grid, len(CELL_TARGETS)), np.int32)
    centres = (np.arange(grid) + 0.5) / grid
    for n, path in enumerate(images):
        with Image.open(path) as image:  # the header only: the frame's size
            width, height = image.size
        for obj in scenes[path.name]:
            # An ellipse of the object's radius in the frame's stretched coordinates (the model's view).
            dx = (centres[None, :] - obj["x"] / width) / (obj["radius"] / width)
            dy = (centres[:, None] - obj["y"] / height) / (obj["radius"] / height)
            inside = (np.square(dx) + np.square(dy) < 1).reshape(-1)
            truth[n, inside] = (SHAPES.index(obj["shape"]) + 1, list(COLOURS).index(obj["colour"]) + 1,
                                list(SIZES).index(obj["size"]) + 1)
    return truth


def cell_heads(features) -> list:
    """The auxiliary loss's per-position classifiers over the learned features (training only)."""
    return [layers.Dense(classes, name=f"cell_{name}")(features) for name, classes in CELL_TARGETS]


def grid_side(positions: int) -> int:
    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(f"{positions} positions are not a square grid")
    return side

"""Held-out scenes drawn by code that shares nothing with training.synthetic: pixel masks in numpy
instead of PIL polygons, other colour values, other size rules, other backgrounds and frames.

Two sets, each a list of DrawnScene (PNG bytes and the objects a right caption names):
  other_drawn(count, seed)  flat, ramped and noisy backgrounds; 299x299 and 640x480 frames
  paint_drawings()          18 crisp paint-program drawings (single shapes and pairs) on white, grey, black
The words are the demo's (sizes, colours, shapes); nothing here is tuned to the generator.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle")
# Colours as people pick them: a paint program's palette and the pure primaries.
PALETTES = {
    "red": [(237, 28, 36), (255, 0, 0), (200, 16, 46)],
    "green": [(34, 177, 76), (0, 200, 0), (0, 150, 60)],
    "blue": [(63, 72, 204), (0, 0, 255), (0, 90, 200)],
    "yellow": [(255, 242, 0), (255, 255, 0), (250, 205, 30)],
}
# Half-width of a shape as a share of the frame's shorter side.
SIZE_SHARES = {"small": (0.115, 0.145), "large": (0.215, 0.245)}


@dataclass
class DrawnScene:
    name: str
    png: bytes
    objects: list[tuple[str, str, str]]   # (size, colour, shape) of every object


def shape_mask(shape: str, cx: float, cy: float, half: float, width: int, height: int) -> np.ndarray:
    """Boolean mask of a shape centred at (cx, cy): a disc, an axis-aligned square, or an
    upward equilateral triangle, each `half` wide to either side."""
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        side = half * 0.88
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    # Equilateral: base at +half*0.6 below the centre, apex above; inside all three half-planes.
    top, base = cy - half * 1.05, cy + half * 0.75
    slope = (base - top) / half
    return (yy <= base) & (yy >= top + slope * np.abs(dx))


def render(background: np.ndarray, objects: list[tuple]) -> np.ndarray:
    """Paint (size, colour, shape, cx, cy, half, rgb) objects onto a float background [H, W, 3]."""
    image = background.copy()
    height, width = image.shape[:2]
    for _, _, shape, cx, cy, half, rgb in objects:
        image[shape_mask(shape, cx, cy, half, width, height)] = rgb
    return np.clip(image, 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def other_background(kind: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """flat (any grey), ramped (a linear ramp between two greys) or noisy (grey plus Gaussian noise)."""
    grey = rng.uniform(0, 255)
    if kind == "flat":
        plane = np.full((height, width), grey)
    elif kind == "ramped":
        t = np.linspace(0, 1, width)[None, :] if rng.random() < 0.5 else np.linspace(0, 1, height)[:, None]
        plane = np.broadcast_to(grey + (rng.uniform(0, 255) - grey) * t, (height, width))
    else:
        plane = grey + rng.normal(0, 14, size=(height, width))
    return np.repeat(np.asarray(plane, np.float64)[..., None], 3, axis=2)


def place(count: int, width: int, height: int, rng: np.random.Generator):
    """`count` objects with distinct words, apart and clearly side by side or one above the other."""
    short = min(width, height)
    while True:
        objects = []
        for _ in range(count):
            size = ("small", "large")[rng.integers(2)]
            half = short * rng.uniform(*SIZE_SHARES[size])
            colour = list(PALETTES)[rng.integers(len(PALETTES))]
            shape = SHAPES[rng.integers(len(SHAPES))]
            margin = half * 1.1 + 3
            rgb = PALETTES[colour][rng.integers(len(PALETTES[colour]))]
            objects.append((size, colour, shape, rng.uniform(margin, width - margin),
                            rng.uniform(margin, height - margin), half, rgb))
        if count == 2:
            (*words_a, xa, ya, ha, _), (*words_b, xb, yb, hb, _) = objects
            gap = np.hypot(xa - xb, ya - yb) > 1.2 * (ha + hb) + 10
            dx, dy = abs(xa - xb) / width, abs(ya - yb) / height
            if not gap or words_a == words_b or max(dx, dy) < 1.4 * min(dx, dy):
                continue
        return objects


def other_drawn(count: int = 120, seed: int = 2024) -> list[DrawnScene]:
    """`count` scenes: a third each on flat, ramped and noisy backgrounds, half 299x299 and
    half 640x480, 40 % with one object and 60 % with two."""
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(count):
        kind = ("flat", "ramped", "noisy")[i % 3]
        width, height = ((299, 299), (640, 480))[(i // 3) % 2]
        objects = place(1 if rng.random() < 0.4 else 2, width, height, rng)
        pixels = render(other_background(kind, width, height, rng), objects)
        scenes.append(DrawnScene(f"{kind}-{width}x{height}-{i:03d}", png_bytes(pixels),
                                 [tuple(o[:3]) for o in objects]))
    return scenes


# (objects as (size, colour, shape, x share, y share)) drawn on each canvas colour.
PAINTINGS = [
    [("small", "green", "circle", 0.5, 0.5)],
    [("large", "red", "square", 0.45, 0.55)],
    [("small", "blue", "triangle", 0.6, 0.4)],
    [("large", "yellow", "circle", 0.3, 0.5), ("small", "blue", "square", 0.75, 0.5)],
    [("small", "red", "triangle", 0.5, 0.25), ("large", "green", "square", 0.5, 0.7)],
    [("large", "blue", "circle", 0.28, 0.45), ("large", "red", "triangle", 0.72, 0.55)],
]
CANVASES = {"white": (255, 255, 255), "grey": (128, 128, 128), "black": (0, 0, 0)}


def paint_drawings() -> list[DrawnScene]:
    """18 crisp drawings, as made in a paint program: the PAINTINGS on white, grey and black
    canvases of 400x300 pixels, each colour its palette's first value."""
    width, height = 400, 300
    scenes = []
    for canvas, value in CANVASES.items():
        background = np.broadcast_to(np.array(value, np.float64), (height, width, 3))
        for i, painting in enumerate(PAINTINGS):
            objects = [(size, colour, shape, x * width, y * height, height * np.mean(SIZE_SHARES[size]),
                        PALETTES[colour][0]) for size, colour, shape, x, y in painting]
            scenes.append(DrawnScene(f"paint-{canvas}-{i}", png_bytes(render(background, objects)),
                                     [o[:3] for o in objects]))
    return scenes

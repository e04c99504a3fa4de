"""Synthetic "shapes" dataset: scenes of coloured shapes with captions, in the Flickr8k layout.

Usage: python -m training.synthetic --out data/shapes --images 3000 --seed 0

Writes <out>/Images/*.jpg and *.png (frames of several sizes and backgrounds), <out>/Flickr8k.token.txt (5 captions per image),
<out>/Flickr_8k.{train,dev,test}Images.txt and <out>/scenes.json, the ground truth
(every object's size, colour, shape and box) that attribute accuracy is checked against.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .datasets import split_sizes

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 20),
}
# Radius (half the bounding box) in pixels on a CANVAS-sized image, per size word.
SIZES = {"small": (36, 44), "large": (64, 74)}
CANVAS = 299

SINGLE_TEMPLATES = (
    "a {a} in the {region}",
    "there is a {a} in the {region}",
    "a {a} placed in the {region}",
    "one {a} in the {region} of the image",
    "the image shows a {a} in the {region}",
    "a picture of a {a} in the {region}",
)
# {a} is always the left (or upper) object, so the order of objects in a caption is canonical.
PAIR_TEMPLATES_HORIZONTAL = (
    "a {a} to the left of a {b}",
    "there is a {a} left of a {b}",
    "a {a} and a {b} on its right",
    "a {a} next to a {b}",
    "the image shows a {a} and a {b}",
    "a {a} beside a {b}",
)
PAIR_TEMPLATES_VERTICAL = (
    "a {a} above a {b}",
    "there is a {a} over a {b}",
    "a {a} and a {b} below it",
    "a {a} on top of a {b}",
    "the image shows a {a} and a {b}",
    "a {a} higher than a {b}",
)
CAPTIONS_PER_IMAGE = 5


@dataclass
class SceneObject:
    """One shape in a scene: its words and where it was drawn (centre and radius, pixels)."""

    size: str
    colour: str
    shape: str
    x: float
    y: float
    radius: float
    aspect: float = 1.0  # width over height of the shape before rotation
    angle: float = 0.0   # rotation in degrees

    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


def region_of(x: float, y: float, width: float = CANVAS, height: float = CANVAS) -> str:
    """Name the cell of a 3x3 grid over the frame that (x, y) falls in, e.g. 'upper left' or 'center'."""
    vertical = ("upper", "middle", "lower")[min(int(3 * y // height), 2)]
    horizontal = ("left", "center", "right")[min(int(3 * x // width), 2)]
    if vertical == "middle" and horizontal == "center":
        return "center"
    if vertical == "middle":
        return f"middle {horizontal}"
    return f"{vertical} {horizontal}"


def canonical_order(objects: list[SceneObject], width: float = CANVAS,
                    height: float = CANVAS) -> tuple[list[SceneObject], bool]:
    """Order objects as captions name them: left to right, or top to bottom when the vertical
    gap (as a share of the frame, which is how the stretched model input sees it) is larger.
    Returns the objects and whether the relation is vertical."""
    if len(objects) < 2:
        return list(objects), False
    a, b = objects
    vertical = abs(a.y - b.y) / height > abs(a.x - b.x) / width
    key = (lambda o: o.y) if vertical else (lambda o: o.x)
    return sorted(objects, key=key), vertical


def captions_for(objects: list[SceneObject], rng: np.random.Generator, width: float = CANVAS,
                 height: float = CANVAS) -> list[str]:
    """Five different captions for a scene, each naming every object's size, colour and shape."""
    ordered, vertical = canonical_order(objects, width, height)
    if len(ordered) == 1:
        obj = ordered[0]
        templates = SINGLE_TEMPLATES
        fields = {"a": obj.phrase(), "region": region_of(obj.x, obj.y, width, height)}
    else:
        templates = PAIR_TEMPLATES_VERTICAL if vertical else PAIR_TEMPLATES_HORIZONTAL
        fields = {"a": ordered[0].phrase(), "b": ordered[1].phrase()}
    chosen = rng.choice(len(templates), size=CAPTIONS_PER_IMAGE, replace=False)
    return [templates[i].format(**fields) for i in chosen]


# Frames people bring: (width, height) and how often. A frame that is not square reaches the model
# stretched to 299x299 (the bundle's preprocessing resizes without cropping, as Keras' load_img
# does), so the decoder must learn shapes squeezed by up to 16:9.
FRAMES = {(299, 299): 0.4, (640, 480): 0.2, (480, 640): 0.1, (400, 300): 0.1, (512, 288): 0.1,
          (300, 400): 0.05, (800, 600): 0.05}
BACKGROUNDS = {"flat": 0.3, "ramp": 0.2, "noisy": 0.3, "textured": 0.2}
PNG_FRACTION = 0.3


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A low-saturation background, never one of the shape colours: flat (white, black or any grey),
    a gentle ramp, a noisy ramp, or a soft texture."""
    kind = str(rng.choice(list(BACKGROUNDS), p=list(BACKGROUNDS.values())))
    tint = rng.uniform(-8, 8, size=3)
    if kind == "flat":
        level = rng.choice([255.0, 0.0, rng.uniform(0, 255)], p=[0.3, 0.2, 0.5])
        return Image.new("RGB", (width, height), tuple(int(np.clip(level + t, 0, 255)) for t in tint))
    yy, xx = np.mgrid[0:height, 0:width]
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(direction) * xx / width + np.sin(direction) * yy / height) * rng.uniform(-50, 50)
    pixels = rng.uniform(40, 215) + ramp
    if kind == "noisy":
        pixels = pixels + rng.normal(0, rng.uniform(2, 12), size=(height, width))
    elif kind == "textured":
        # Smooth blobs or stripes: low-contrast structure the decoder must learn to ignore.
        if rng.random() < 0.5:
            cells = rng.normal(0, rng.uniform(10, 30), size=(int(rng.integers(3, 12)), int(rng.integers(3, 12))))
            blobs = Image.fromarray(cells.astype(np.float32), "F").resize((width, height), Image.BICUBIC)
            pixels = pixels + np.asarray(blobs)
        else:
            period = rng.uniform(8, 40)
            pixels = pixels + rng.uniform(8, 25) * np.sign(np.sin(2 * math.pi * (xx + yy * rng.uniform(-1, 1)) / period))
    pixels = pixels[..., None] + tint
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _outline(obj: SceneObject) -> list[tuple[float, float]]:
    """The shape's corners (64 for a circle) around its centre: proportions, then rotation."""
    r = obj.radius
    if obj.shape == "circle":
        angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        points = np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)
    elif obj.shape == "square":
        s = r * 0.9  # a square of the same "size" looks larger than a circle; shrink slightly
        points = np.array([(-s, -s), (s, -s), (s, s), (-s, s)])
    else:
        points = np.array([(0, -r), (-r * 0.95, r * 0.8), (r * 0.95, r * 0.8)])
    points = points * [obj.aspect, 1 / obj.aspect]
    turn = math.radians(obj.angle)
    rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    return [(obj.x + px, obj.y + py) for px, py in points @ rotation.T]


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, rng: np.random.Generator) -> None:
    brightness = rng.uniform(0.8, 1.1)
    jitter = rng.integers(-25, 26, size=3)
    fill = tuple(int(np.clip(c * brightness + j, 0, 255)) for c, j in zip(COLOURS[obj.colour], jitter))
    draw.polygon(_outline(obj), fill=fill)


def _place(rng: np.random.Generator, count: int, width: int, height: int) -> list[SceneObject]:
    """Random non-overlapping objects with distinct (size, colour, shape) words.

    Sizes scale with the frame, between its short side's and its area's share of the 299-pixel canvas."""
    short, area = min(width, height) / CANVAS, math.sqrt(width * height) / CANVAS
    while True:
        objects: list[SceneObject] = []
        for _ in range(count):
            size = str(rng.choice(list(SIZES)))
            radius = float(rng.uniform(*SIZES[size]) * rng.uniform(short, area))
            margin = radius * 1.15 + 4
            shape = str(rng.choice(SHAPES))
            objects.append(SceneObject(
                size=size,
                colour=str(rng.choice(list(COLOURS))),
                shape=shape,
                x=float(rng.uniform(margin, width - margin)),
                y=float(rng.uniform(margin, height - margin)),
                radius=radius,
                aspect=float(rng.uniform(0.87, 1.15)),
                angle=float(rng.uniform(-20, 20)) if shape != "circle" else 0.0,
            ))
        if count == 2:
            a, b = objects
            apart = math.hypot(a.x - b.x, a.y - b.y) > 1.15 * (a.radius + b.radius) + 12
            # An ambiguous diagonal makes "left of" vs "above" a coin toss; keep relations clear.
            dx, dy = abs(a.x - b.x) / width, abs(a.y - b.y) / height
            clear = max(dx, dy) > 1.3 * min(dx, dy)
            if not (apart and clear) or a.phrase() == b.phrase():
                continue
        return objects


def make_scene(rng: np.random.Generator, two_object_fraction: float = 0.6):
    """One scene: (image, objects, captions), in one of FRAMES on one of BACKGROUNDS."""
    frames = list(FRAMES)
    width, height = frames[rng.choice(len(frames), p=list(FRAMES.values()))]
    count = 2 if rng.random() < two_object_fraction else 1
    objects = _place(rng, count, width, height)
    image = _background(rng, width, height)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw(draw, obj, rng)
    return image, objects, captions_for(objects, rng, width, height)


def generate(out: Path, images: int, seed: int, two_object_fraction: float = 0.6) -> dict:
    """Write a dataset of `images` scenes to `out` in the Flickr8k layout; deterministic for `seed`.

    Scenes are saved as JPEG (quality 75-95) or, PNG_FRACTION of them, PNG."""
    rng = np.random.default_rng(seed)
    image_dir = out / "Images"
    image_dir.mkdir(parents=True, exist_ok=True)
    names, scenes, token_lines = [], {}, []
    for i in range(images):
        image, objects, captions = make_scene(rng, two_object_fraction)
        if rng.random() < PNG_FRACTION:
            name = f"shapes_{seed}_{i:05d}.png"
            image.save(image_dir / name, compress_level=1)  # the default level takes twice as long to write
        else:
            name = f"shapes_{seed}_{i:05d}.jpg"
            image.save(image_dir / name, quality=int(rng.integers(75, 96)))
        names.append(name)
        scenes[name] = [asdict(o) for o in objects]
        token_lines += [f"{name}#{k}\t{caption}" for k, caption in enumerate(captions)]
    (out / "Flickr8k.token.txt").write_text("\n".join(token_lines) + "\n")
    order = rng.permutation(images)
    sizes = split_sizes(images)
    n_train, n_dev = sizes["train"], sizes["dev"]
    splits = {
        "train": order[:n_train],
        "dev": order[n_train:n_train + n_dev],
        "test": order[n_train + n_dev:],
    }
    for split, indices in splits.items():
        (out / f"Flickr_8k.{split}Images.txt").write_text("".join(f"{names[i]}\n" for i in sorted(indices)))
    info = {"generator": "training.synthetic", "seed": seed, "images": images,
            "two_object_fraction": two_object_fraction, "scenes": scenes}
    (out / "scenes.json").write_text(json.dumps(info))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--images", type=int, default=3000, help="number of scenes (>= 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--two-object-fraction", type=float, default=0.6)
    args = parser.parse_args(argv)
    if args.images < 10:
        parser.error("--images must be at least 10 (train, dev and test splits each need images)")
    if not 0 <= args.two_object_fraction <= 1:
        parser.error("--two-object-fraction must be between 0 and 1")
    generate(args.out, args.images, args.seed, args.two_object_fraction)
    print(f"wrote {args.images} scenes to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

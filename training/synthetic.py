"""Synthetic "shapes" dataset: scenes of coloured shapes with captions, in the Flickr8k layout.

Usage: python -m training.synthetic --out data/shapes --images 3000 --seed 0

Writes <out>/Images/*.jpg, <out>/Flickr8k.token.txt (5 captions per image),
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

    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


def region_of(x: float, y: float) -> str:
    """Name the cell of a 3x3 grid that (x, y) falls in, e.g. 'upper left' or 'center'."""
    third = CANVAS / 3
    vertical = ("upper", "middle", "lower")[min(int(y // third), 2)]
    horizontal = ("left", "center", "right")[min(int(x // third), 2)]
    if vertical == "middle" and horizontal == "center":
        return "center"
    if vertical == "middle":
        return f"middle {horizontal}"
    return f"{vertical} {horizontal}"


def canonical_order(objects: list[SceneObject]) -> tuple[list[SceneObject], bool]:
    """Order objects as captions name them: left to right, or top to bottom when the
    vertical gap is larger. Returns the objects and whether the relation is vertical."""
    if len(objects) < 2:
        return list(objects), False
    a, b = objects
    vertical = abs(a.y - b.y) > abs(a.x - b.x)
    key = (lambda o: o.y) if vertical else (lambda o: o.x)
    return sorted(objects, key=key), vertical


def captions_for(objects: list[SceneObject], rng: np.random.Generator) -> list[str]:
    """Five different captions for a scene, each naming every object's size, colour and shape."""
    ordered, vertical = canonical_order(objects)
    if len(ordered) == 1:
        obj = ordered[0]
        templates = SINGLE_TEMPLATES
        fields = {"a": obj.phrase(), "region": region_of(obj.x, obj.y)}
    else:
        templates = PAIR_TEMPLATES_VERTICAL if vertical else PAIR_TEMPLATES_HORIZONTAL
        fields = {"a": ordered[0].phrase(), "b": ordered[1].phrase()}
    chosen = rng.choice(len(templates), size=CAPTIONS_PER_IMAGE, replace=False)
    return [templates[i].format(**fields) for i in chosen]


def _background(rng: np.random.Generator) -> Image.Image:
    """A low-saturation background: a grey-ish gradient with noise, never one of the shape colours."""
    base = rng.uniform(60, 200)
    tint = rng.uniform(-12, 12, size=3)
    direction = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS] / CANVAS
    ramp = (np.cos(direction) * xx + np.sin(direction) * yy) * rng.uniform(-40, 40)
    noise = rng.normal(0, rng.uniform(2, 10), size=(CANVAS, CANVAS, 1))
    pixels = base + tint + ramp[..., None] + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, rng: np.random.Generator) -> None:
    jitter = rng.integers(-18, 19, size=3)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[obj.colour], jitter))
    x, y, r = obj.x, obj.y, obj.radius
    if obj.shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif obj.shape == "square":
        s = r * 0.9  # a square of the same "size" looks larger than a circle; shrink slightly
        draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
    else:
        draw.polygon([(x, y - r), (x - r * 0.95, y + r * 0.8), (x + r * 0.95, y + r * 0.8)], fill=fill)


def _place(rng: np.random.Generator, count: int) -> list[SceneObject]:
    """Random non-overlapping objects with distinct (size, colour, shape) words."""
    while True:
        objects: list[SceneObject] = []
        for _ in range(count):
            size = str(rng.choice(list(SIZES)))
            radius = float(rng.uniform(*SIZES[size]))
            margin = radius + 4
            objects.append(SceneObject(
                size=size,
                colour=str(rng.choice(list(COLOURS))),
                shape=str(rng.choice(SHAPES)),
                x=float(rng.uniform(margin, CANVAS - margin)),
                y=float(rng.uniform(margin, CANVAS - margin)),
                radius=radius,
            ))
        if count == 2:
            a, b = objects
            apart = math.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius + 12
            # An ambiguous diagonal makes "left of" vs "above" a coin toss; keep relations clear.
            dx, dy = abs(a.x - b.x), abs(a.y - b.y)
            clear = max(dx, dy) > 1.3 * min(dx, dy)
            if not (apart and clear) or a.phrase() == b.phrase():
                continue
        return objects


def make_scene(rng: np.random.Generator, two_object_fraction: float = 0.6):
    """One scene: (image, objects, captions)."""
    count = 2 if rng.random() < two_object_fraction else 1
    objects = _place(rng, count)
    image = _background(rng)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw(draw, obj, rng)
    return image, objects, captions_for(objects, rng)


def generate(out: Path, images: int, seed: int, two_object_fraction: float = 0.6) -> dict:
    """Write a dataset of `images` scenes to `out` in the Flickr8k layout; deterministic for `seed`."""
    rng = np.random.default_rng(seed)
    image_dir = out / "Images"
    image_dir.mkdir(parents=True, exist_ok=True)
    names, scenes, token_lines = [], {}, []
    for i in range(images):
        image, objects, captions = make_scene(rng, two_object_fraction)
        name = f"shapes_{seed}_{i:05d}.jpg"
        image.save(image_dir / name, quality=92)
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

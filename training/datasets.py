"""Dataset readers: Flickr8k (token file + split lists, or captions.txt CSV) and COCO captions JSON.

Every reader returns the same shape: {split: [Example(image_path, captions)]}, images in a
stable order, so training does not care where the data came from.
"""
from __future__ import annotations

import csv
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "dev", "test")
# For datasets without split lists, and for the synthetic scenes the project generates.
SPLIT_FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}


class DatasetError(ValueError):
    """A dataset folder or file that cannot be read as the layout it claims to be."""


@dataclass
class Example:
    """One image and all its reference captions."""

    image: Path
    captions: list[str] = field(default_factory=list)


def _group(pairs, image_dir: Path) -> "OrderedDict[str, Example]":
    grouped: OrderedDict[str, Example] = OrderedDict()
    for name, caption in pairs:
        caption = caption.strip()
        if not caption:
            continue
        grouped.setdefault(name, Example(image_dir / name)).captions.append(caption)
    return grouped


def read_flickr8k_token_file(path: Path) -> list[tuple[str, str]]:
    """Parse `name.jpg#k<TAB>caption` lines (Flickr8k.token.txt) into (name, caption) pairs."""
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, caption = line.partition("\t")
        if not sep:
            raise DatasetError(f"{path}:{number}: expected 'image#k<TAB>caption'")
        pairs.append((key.split("#", 1)[0], caption))
    return pairs


def read_flickr8k_csv(path: Path) -> list[tuple[str, str]]:
    """Parse the common `captions.txt` CSV (header `image,caption`) into (name, caption) pairs."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected a CSV header 'image,caption'")
        return [(row["image"], row["caption"] or "") for row in reader]


def split_sizes(n: int) -> dict[str, int]:
    """How many of n images go to each split, by SPLIT_FRACTIONS (test takes the remainder)."""
    train, dev = (int(n * SPLIT_FRACTIONS[s] + 1e-9) for s in ("train", "dev"))
    return {"train": train, "dev": dev, "test": n - train - dev}


def _split_by_fraction(names: list[str]) -> dict[str, list[str]]:
    """Deterministic split for datasets that ship without split lists (the CSV layout)."""
    sizes = split_sizes(len(names))
    n_train, n_dev = sizes["train"], sizes["dev"]
    return {"train": names[:n_train], "dev": names[n_train:n_train + n_dev], "test": names[n_train + n_dev:]}


def load_flickr8k(root: Path) -> dict[str, list[Example]]:
    """Read a Flickr8k-layout folder: images in Images/ (or Flicker8k_Dataset/), captions in
    Flickr8k.token.txt with Flickr_8k.{train,dev,test}Images.txt, or in captions.txt."""
    root = Path(root)
    image_dir = next((root / d for d in ("Images", "Flicker8k_Dataset", "Flickr8k_Dataset") if (root / d).is_dir()), None)
    if image_dir is None:
        raise DatasetError(f"{root}: no image folder (Images/ or Flicker8k_Dataset/)")
    token_file, csv_file = root / "Flickr8k.token.txt", root / "captions.txt"
    if token_file.exists():
        grouped = _group(read_flickr8k_token_file(token_file), image_dir)
        split_names = {}
        for split in SPLITS:
            split_file = root / f"Flickr_8k.{split}Images.txt"
            if not split_file.exists():
                raise DatasetError(f"{root}: missing split list {split_file.name}")
            split_names[split] = [n.strip() for n in split_file.read_text().splitlines() if n.strip()]
    elif csv_file.exists():
        grouped = _group(read_flickr8k_csv(csv_file), image_dir)
        split_names = _split_by_fraction(list(grouped))
    else:
        raise DatasetError(f"{root}: neither Flickr8k.token.txt nor captions.txt found")
    splits = {}
    for split, names in split_names.items():
        missing = [n for n in names if n not in grouped]
        if missing:
            raise DatasetError(f"{root}: {len(missing)} {split} images have no captions, e.g. {missing[0]}")
        splits[split] = [grouped[n] for n in names]
    return splits


def load_coco(annotations: Path, image_dir: Path) -> dict[str, list[Example]]:
    """Read a COCO captions JSON (captions_train2014.json layout) with its image folder,
    split 80/10/10 by image order (COCO's own val set can be read the same way)."""
    try:
        data = json.loads(Path(annotations).read_text(encoding="utf-8"))
        files = {img["id"]: img["file_name"] for img in data["images"]}
        pairs = [(files[a["image_id"]], a["caption"]) for a in data["annotations"]]
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{annotations}: not a COCO captions file ({exc})") from None
    grouped = _group(pairs, Path(image_dir))
    return {split: [grouped[n] for n in names] for split, names in _split_by_fraction(list(grouped)).items()}


def load_dataset(kind: str, path: Path, image_dir: Path | None = None) -> dict[str, list[Example]]:
    """Load a dataset by kind: 'flickr8k' or 'shapes' (a folder), or 'coco' (a JSON + image folder)."""
    if kind in ("flickr8k", "shapes"):
        return load_flickr8k(path)
    if kind == "coco":
        if image_dir is None:
            raise DatasetError("a COCO dataset needs --image-dir")
        return load_coco(path, image_dir)
    raise DatasetError(f"unknown dataset kind {kind!r} (flickr8k, coco or shapes)")

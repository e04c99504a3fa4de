"""Held-out caption quality, the measure every reduced-precision path is judged by: the share of
scenes with every object right on synthetic scenes, CIDEr-D (the COCO caption evaluation's) on real data."""
from __future__ import annotations

import json
from pathlib import Path


def run_scenes(run: dict) -> dict | None:
    """The synthetic ground truth of a training run's dataset (run.json), or None for real data."""
    if run["dataset"]["kind"] != "shapes":
        return None
    return json.loads((Path(run["dataset"]["path"]) / "scenes.json").read_text())["scenes"]


def quality(captions: list[list[str]], heldout: list[dict], scenes: dict | None) -> tuple[str, float]:
    """(metric name, value) of greedy `captions` (words) of the `heldout` entries."""
    from training.caption_metrics import coco_metrics
    from training.evaluate import attribute_accuracy

    if scenes is not None:
        truth = [scenes[Path(h["image"]).name] for h in heldout]
        return "objects_right_all", attribute_accuracy(captions, truth)["objects_right_all"]
    return "cider_d", coco_metrics(captions, [h["references"] for h in heldout], meteor=False)["cider_d"]

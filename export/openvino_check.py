"""The quality gate of the OpenVINO bf16 encoder: held-out quality against the float32 bundle.

Usage: python -m export.openvino_check --bundle onnx_models/demo --run runs/demo
       python -m export.openvino_check --bundle onnx_models/demo-int8 --reference onnx_models/demo --run runs/demo

Captions every held-out image of the training run twice, the same way the server does (greedy):
with the float32 bundle on onnxruntime (--reference, by default the bundle itself) and with the
bundle's encoder on OpenVINO in bf16. An int8 bundle's quantised operators run in int8 there
(VNNI), the rest in bf16, so it is checked against its float32 source. Quality
is the share of scenes with every object right on synthetic scenes, BLEU-4 elsewhere; bf16 passes
when it is within 1 point of float32's. The figures (quality of both, caption identity, whether it
passed) go into bundle.json as provenance.parity.openvino_bf16_quality, which the server logs when
it starts with CAPTION_PROVIDERS=openvino,... (and warns when they are missing or failed).
Exit status: 0 passed, 1 failed the gate, 2 cannot run here (no bf16, no openvino, bad paths).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bundle.format import ENCODER_VARIANTS, MAX_QUALITY_LOSS, OPENVINO_BF16_PARITY, BundleError, finish, load_bundle
from bundle.preprocess import load_image

from .heldout_quality import quality, run_scenes


def captions_of(engines: dict, heldout: list[dict], preprocessing: dict) -> dict[str, list[list[str]]]:
    """Greedy captions of the held-out images by each engine, as the server decodes them."""
    captions = {name: [] for name in engines}
    for first in range(0, len(heldout), 16):
        batch = np.stack([load_image(h["image"], preprocessing) for h in heldout[first:first + 16]])
        for name, engine in engines.items():
            captions[name] += [engine.words(beams[0].tokens) for beams in engine.caption(batch).hypotheses]
    return captions


def _judged(reference, checked, run_dir: Path, images: int) -> tuple[str, float, float, str]:
    """(metric, reference's quality, checked's quality, "identical/images") of two engines' greedy
    captions of the run's first `images` held-out images."""
    heldout = json.loads((run_dir / "heldout.json").read_text())[:images]
    scenes = run_scenes(json.loads((run_dir / "run.json").read_text()))
    captions = captions_of({"reference": reference, "checked": checked}, heldout, reference.preprocessing)
    metric, before = quality(captions["reference"], heldout, scenes)
    _, after = quality(captions["checked"], heldout, scenes)
    same = sum(a == b for a, b in zip(captions["reference"], captions["checked"]))
    return metric, before, after, f"{same}/{len(heldout)}"


def check(bundle_dir: Path, run_dir: Path, images: int, log=print, reference_dir: Path | None = None) -> dict:
    """Caption the held-out images both ways, record the figures in bundle.json, return them."""
    from server.engine import CaptionEngine, EngineOptions

    bundle = load_bundle(bundle_dir)
    reference = load_bundle(reference_dir) if reference_dir is not None else bundle
    bf16_engine = CaptionEngine(bundle, EngineOptions(providers=("openvino", "cpu"), strict_providers=True))
    metric, fp32, bf16, same = _judged(CaptionEngine(reference), bf16_engine, run_dir, images)
    figures = {"images": int(same.split("/")[1]), "metric": metric, "fp32": round(fp32, 4), "bf16": round(bf16, 4),
               "greedy_captions_identical": same, "max_quality_loss": MAX_QUALITY_LOSS,
               "passed": fp32 - bf16 <= MAX_QUALITY_LOSS, "provider": bf16_engine.active_providers[0],
               "reference": reference.manifest["name"]}
    log(f"{metric}: fp32 {fp32:.3f}, OpenVINO bf16 {bf16:.3f} ({'passed' if figures['passed'] else 'FAILED'}: "
        f"at most {MAX_QUALITY_LOSS:.2f} lower); greedy captions identical {same}")
    manifest = dict(bundle.manifest)
    manifest.setdefault("provenance", {}).setdefault("parity", {})[OPENVINO_BF16_PARITY] = figures
    finish(bundle_dir, manifest)
    return figures


def check_int8(bundle_dir: Path, run_dir: Path, images: int, max_quality_loss: float = MAX_QUALITY_LOSS,
               log=print) -> dict:
    """The bundle's attached int8 encoder on OpenVINO (its other operators in f32) against the
    bundle's float32 encoder on onnxruntime, on the held-out images its onnxruntime gate judged;
    recorded beside those figures (encoder_variants.int8.quality.openvino), and returned."""
    from server.engine import CaptionEngine, EngineOptions

    bundle = load_bundle(bundle_dir)
    int8_engine = CaptionEngine(bundle, EngineOptions(providers=("openvino", "cpu"), strict_providers=True,
                                                      openvino_precision="f32", encoder_precision="int8"))
    metric, float32, int8, same = _judged(CaptionEngine(bundle), int8_engine, run_dir, images)
    figures = {"images": int(same.split("/")[1]), "metric": metric, "float32": round(float32, 4),
               "variant": round(int8, 4), "greedy_captions_identical": same, "max_quality_loss": max_quality_loss,
               "passed": float32 - int8 <= max_quality_loss + 1e-9, "provider": int8_engine.active_providers[0]}
    log(f"int8 on OpenVINO: held-out {metric} {int8:.3f} against float32's {float32:.3f} "
        f"({'passed' if figures['passed'] else 'FAILED'}); greedy captions identical {same}")
    manifest = dict(bundle.manifest)
    manifest[ENCODER_VARIANTS]["int8"]["quality"]["openvino"] = figures
    finish(bundle_dir, manifest)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True,
                        help="the bundle to check: float32 (onnx_models/demo), or a variant with --reference")
    parser.add_argument("--reference", type=Path, help="the float32 bundle to compare with (default: --bundle)")
    parser.add_argument("--run", type=Path, required=True, help="its training run (held-out images)")
    parser.add_argument("--images", type=int, default=500, help="held-out images to compare (default 500)")
    args = parser.parse_args(argv)
    from server.providers import ProviderError

    if not (args.run / "heldout.json").is_file() or args.images < 1:
        print(f"error: {args.run} has no heldout.json, or --images is below 1", file=sys.stderr)
        return 2
    try:
        figures = check(args.bundle, args.run, args.images, log=lambda m: print(m, file=sys.stderr),
                        reference_dir=args.reference)
    except (BundleError, ProviderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Reduced-precision variants of a bundle: the encoder converted, the decoder graphs kept as
they are, and the result checked against its source before it is written, as a bundle of its
own or (`attach_variant`) as an alternative encoder recorded in the source bundle itself.

`export.fp16` (float16, for GPUs) and `export.int8` (static int8, for CPUs) differ only in how
they convert the encoder; everything else (staging, the quality check, the manifest, the
command line) lives here. A variant is judged by quality: its held-out quality (every object
right on synthetic scenes, CIDEr-D on real data) must be within --max-quality-loss of its
float32 source's, or it is refused and nothing is written. Caption identity is reported beside it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bundle.decoding import words_of
from bundle.format import ENCODER_VARIANTS, MAX_QUALITY_LOSS, BundleError, finish, load_bundle, sha256, staged_bundle
from bundle.preprocess import load_image
from bundle.sessions import SessionEncoder

from .heldout_quality import quality, run_scenes
from .parity import greedy_ids


class VariantError(RuntimeError):
    """The source bundle cannot be converted, or the variant disagrees with it."""


@dataclass(frozen=True)
class Precision:
    """One kind of variant: its encoder's precision, how it is made, and what it is for."""

    name: str             # "float16", "int8": the manifest's precision for the encoder
    short: str            # "fp16", "int8": for messages and the parity key
    purpose: str          # appended to the bundle's description
    tool: str             # the package whose version the manifest records
    # convert(source_encoder, target_encoder, context) -> figures for the manifest
    convert: Callable[[Path, Path, "Context"], dict]


@dataclass
class Context:
    """What a converter may need besides the two paths."""

    manifest: dict                  # the source bundle's manifest
    calibration: list[dict]         # held-out entries not used for the caption check
    log: Callable[[str], None]
    decoder_sessions: dict          # the source's decoder graphs on onnxruntime, by role
    words_of: Callable[[list[int]], list[str]]
    no_repeat_ngram_size: int
    scenes: dict | None             # the synthetic ground truth, None for real data
    max_quality_loss: float


def compare(source: dict[str, Path], variant: dict[str, Path], heldout: list[dict], manifest: dict,
            words: list[str], scenes: dict | None, providers: list[str], short: str, log=print,
            no_repeat_ngram_size: int = 0) -> dict:
    """Held-out quality, greedy captions and features of the variant's graphs against the
    source's, on the same providers, decoded as the server decodes them."""
    import onnxruntime as ort

    reference, converted = ({role: ort.InferenceSession(str(path), providers=providers) for role, path in graphs.items()}
                            for graphs in (source, variant))
    graphs, preprocessing = manifest["graphs"], manifest["preprocessing"]
    special, max_length = manifest["special_tokens"], manifest["max_length"]
    encode_reference, encode_converted = SessionEncoder(reference["encoder"], graphs), SessionEncoder(converted["encoder"], graphs)
    same, worst, spread, error = 0, 0.0, [], []
    captions: dict[str, list] = {"float32": [], "variant": []}
    for first in range(0, len(heldout), 16):
        images = np.stack([load_image(Path(h["image"]), preprocessing) for h in heldout[first:first + 16]])
        want, got = encode_reference(images), encode_converted(images)
        worst = max(worst, float(np.abs(want - got).max()))
        error.append(np.abs(want - got).mean())
        spread.append(want)
        a = greedy_ids(reference, graphs, want, special, max_length, no_repeat_ngram_size)
        b = greedy_ids(converted, graphs, got, special, max_length, no_repeat_ngram_size)
        same += sum(x == y for x, y in zip(a, b))
        captions["float32"] += [words_of(ids, words, special.values()) for ids in a]
        captions["variant"] += [words_of(ids, words, special.values()) for ids in b]
    metric, float32 = quality(captions["float32"], heldout, scenes)
    _, reduced = quality(captions["variant"], heldout, scenes)
    feature_spread = float(np.concatenate(spread).std(0).mean())
    figures = {"providers": converted["encoder"].get_providers(),
               "images": len(heldout),
               "metric": metric, "float32": round(float32, 4), "variant": round(reduced, 4),
               "greedy_captions_identical": f"{same}/{len(heldout)}",
               "agreement": round(same / len(heldout), 4),
               "max_abs_feature_diff": worst,
               "mean_abs_feature_diff": float(np.mean(error)),
               "feature_spread": feature_spread}
    log(f"{short} on {figures['providers'][0]}: held-out {metric} {reduced:.3f} against float32's {float32:.3f}; "
        f"greedy captions {same}/{len(heldout)} identical to the source's, "
        f"mean |feature diff| {figures['mean_abs_feature_diff']:.2e}, max {worst:.2e} "
        f"(features vary by {feature_spread:.2e} across images)")
    return figures


def _source(source: Path, run_dir: Path, images: int, calibration_images: int):
    """(bundle, its graphs by role, compared entries, calibration entries, scenes) of a float32 source."""
    try:
        loaded = load_bundle(source)
    except BundleError as exc:
        raise VariantError(str(exc)) from None
    current = loaded.manifest.get("precision", {}).get("encoder", "float32")
    if current != "float32":
        raise VariantError(f"{source} is already a variant ({current} encoder); convert its float32 source")
    heldout = json.loads((run_dir / "heldout.json").read_text())
    compared, calibration = heldout[:images], heldout[images:images + calibration_images]
    if calibration_images and not calibration:
        raise VariantError(f"{run_dir} holds {len(heldout)} held-out images, none left to calibrate on after "
                           f"the {len(compared)} compared; lower --images")
    graphs = {role: source / graph["file"] for role, graph in loaded.manifest["graphs"].items()}
    return loaded, graphs, compared, calibration, run_scenes(json.loads((run_dir / "run.json").read_text()))


def _convert_and_judge(precision: Precision, loaded, source_graphs: dict[str, Path], encoder: Path,
                       compared: list[dict], calibration: list[dict], scenes, max_quality_loss: float,
                       providers: list[str], log) -> dict:
    """Convert the encoder to `encoder` and judge it against the source on the compared entries:
    the figures, with `passed`."""
    import onnxruntime as ort

    decoder = {role: ort.InferenceSession(str(path), providers=providers)
               for role, path in source_graphs.items() if role != "encoder"}
    started = time.time()
    context = Context(loaded.manifest, calibration, log, decoder, loaded.words_of, loaded.no_repeat_ngram_size,
                      scenes, max_quality_loss)
    conversion = precision.convert(source_graphs["encoder"], encoder, context)
    log(f"converted the encoder to {precision.name} in {time.time() - started:.1f}s")
    figures = compare(source_graphs, {**source_graphs, "encoder": encoder}, compared, loaded.manifest, loaded.words,
                      scenes, providers, precision.short, log, loaded.no_repeat_ngram_size)
    figures.update(conversion)
    figures.update(max_quality_loss=max_quality_loss,
                   passed=figures["float32"] - figures["variant"] <= max_quality_loss + 1e-9)
    return figures


def _refusal(precision: Precision, figures: dict, max_quality_loss: float) -> str:
    return (f"{precision.short} loses quality: held-out {figures['metric']} {figures['variant']} "
            f"against float32's {figures['float32']} (greedy captions identical on "
            f"{figures['greedy_captions_identical']}), more than --max-quality-loss {max_quality_loss}")


def make_variant(precision: Precision, source: Path, run_dir: Path, out: Path, name: str, images: int,
                 max_quality_loss: float, providers: list[str], calibration_images: int = 0, log=print) -> dict:
    """Convert, check and write a variant of `source`; returns its manifest.

    The caption check uses the first `images` held-out images (or all there are) and calibration
    up to `calibration_images` of the rest, so a converter never calibrates on the images it is
    judged on.
    """
    from importlib.metadata import version

    loaded, source_graphs, compared, calibration, scenes = _source(source, run_dir, images,
                                                                   calibration_images)
    manifest = dict(loaded.manifest)
    source_name = manifest["name"]
    with staged_bundle(out) as staging:
        figures = _convert_and_judge(precision, loaded, source_graphs, staging / "encoder.onnx", compared,
                                     calibration, scenes, max_quality_loss, providers, log)
        if not figures["passed"]:
            raise VariantError(_refusal(precision, figures, max_quality_loss) + "; not written")
        for role, graph in manifest["graphs"].items():
            if role != "encoder":  # the decoder graphs, plain and optimised, as they are
                for key in ("file", "optimized_file"):
                    if graph.get(key):
                        shutil.copy(source / graph[key], staging)
        shutil.copy(source / manifest["vocabulary"]["file"], staging)
        # The source's optimised encoder is not converted: onnxruntime optimises the variant's
        # graph for whichever provider loads it.
        manifest["graphs"]["encoder"] = {k: v for k, v in manifest["graphs"]["encoder"].items()
                                         if k != "optimized_file"}
        manifest.pop(ENCODER_VARIANTS, None)
        manifest.update(name=name, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        precision={role: precision.name if role == "encoder" else "float32"
                                   for role in manifest["graphs"]})
        manifest["description"] += f" {precision.short} variant: {precision.purpose}"
        manifest["tools"][precision.tool] = version(precision.tool)
        manifest["provenance"]["variant_of"] = {"name": source_name, "path": str(source),
                                                "bundle_json_sha256": sha256(source / "bundle.json")}
        # Beside the float32 export's own parity figures, which the variant keeps.
        manifest["provenance"]["parity"][f"{precision.short}_vs_fp32"] = figures
        manifest = finish(staging, manifest)
    return manifest


def attach_variant(precision: Precision, source: Path, run_dir: Path, images: int, max_quality_loss: float,
                   providers: list[str], calibration_images: int = 0, log=print) -> dict:
    """Convert and check the encoder of `source` and record it in that bundle's manifest under
    encoder_variants.<precision>: the file when it passed, its figures either way (so that the
    server can say why it does not choose a refused one). Returns the record; VariantError when refused."""
    from importlib.metadata import version

    loaded, source_graphs, compared, calibration, scenes = _source(source, run_dir, images,
                                                                   calibration_images)
    file = f"encoder.{precision.short}.onnx"
    staged = source / (file + ".partial")
    try:
        figures = _convert_and_judge(precision, loaded, source_graphs, staged, compared, calibration, scenes,
                                     max_quality_loss, providers, log)
        if figures["passed"]:
            staged.replace(source / file)
    finally:
        staged.unlink(missing_ok=True)
    if not figures["passed"]:
        (source / file).unlink(missing_ok=True)
    record = {"file": file if figures["passed"] else None, "precision": precision.name,
              "tool": f"{precision.tool} {version(precision.tool)}", "quality": {"onnxruntime": figures}}
    manifest = dict(loaded.manifest)
    manifest.setdefault(ENCODER_VARIANTS, {})[precision.name] = record
    finish(source, manifest)
    if not figures["passed"]:
        raise VariantError(_refusal(precision, figures, max_quality_loss) + f"; recorded in {source}, not attached")
    log(f"attached {file} to {source}")
    return record


def main(precision: Precision, argv: list[str] | None, description: str, example_out: str,
         providers: Callable[[], list[str]], calibration_default: int = 0, attach=None) -> int:
    """The command line every variant tool shares; exit 2 for bad arguments, 1 for a refused variant.
    `attach(source, run, images, max_quality_loss, calibration_images, log)`: what --attach does."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bundle", type=Path, required=True, help="the float32 bundle, e.g. onnx_models/demo")
    parser.add_argument("--run", type=Path, required=True, help="its training run (held-out images for the check)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help=f"variant folder to write, e.g. {example_out}")
    if attach:
        where.add_argument("--attach", action="store_true",
                           help="record the encoder in --bundle itself, for the server to choose where it is fastest")
    parser.add_argument("--name", help="bundle name (default: the --out folder's name)")
    parser.add_argument("--images", type=int, default=200, help="held-out images to compare captions on")
    parser.add_argument("--max-quality-loss", type=float, default=MAX_QUALITY_LOSS,
                        help=f"held-out quality the variant may lose against float32, as a share (default "
                             f"{MAX_QUALITY_LOSS}: one point)")
    if calibration_default:
        parser.add_argument("--calibration-images", type=int, default=calibration_default,
                            help=f"held-out images, after the compared ones, to calibrate on (default {calibration_default})")
    args = parser.parse_args(argv)
    calibration = getattr(args, "calibration_images", 0)
    problems = []
    if not (args.bundle / "bundle.json").is_file():
        problems.append(f"{args.bundle} has no bundle.json")
    if not (args.run / "heldout.json").is_file():
        problems.append(f"{args.run} has no heldout.json (not a finished training run)")
    if args.images <= 0:
        problems.append("--images must be > 0")
    if calibration_default and calibration <= 0:
        problems.append("--calibration-images must be > 0")
    if not 0 <= args.max_quality_loss <= 1:
        problems.append("--max-quality-loss must be between 0 and 1")
    if problems:
        print(f"error: {'; '.join(problems)}", file=sys.stderr)
        return 2
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    try:
        if getattr(args, "attach", False):
            attach(args.bundle, args.run, args.images, args.max_quality_loss, calibration, log=log)
            return 0
        make_variant(precision, args.bundle, args.run, args.out, args.name or args.out.name, args.images,
                     args.max_quality_loss, providers(), calibration, log=log)
    except VariantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote bundle {args.out}", file=sys.stderr)
    return 0

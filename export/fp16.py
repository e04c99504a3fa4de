"""An fp16 variant of a bundle, for GPU serving.

Usage: python -m export.fp16 --bundle onnx_models/demo --run runs/demo --out onnx_models/demo-fp16

The encoder (where nearly all the arithmetic is) is converted to float16 with
onnxconverter-common; its input and output stay float32, so the server loads the variant like
any bundle. The decoder graphs stay float32: they cost well under a millisecond, and the
converter breaks the decoder step (it gives a boolean Less node a float16 output). The variant
is checked against its source bundle on the providers this machine has (CUDA when present):
features, and greedy captions on held-out images, which must agree at --min-agreement or the
variant is not written.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .checksums import sha256
from .parity import load_image, onnx_greedy

class VariantError(RuntimeError):
    """The source bundle cannot be converted, or the variant disagrees with it."""


def convert_encoder(source: Path, target: Path) -> int:
    """Write the float16 encoder; returns how many weights were clamped into float16's range."""
    import onnx
    from onnxconverter_common import float16

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return sum("will be truncated" in str(w.message) for w in caught)


def compare(source: dict[str, Path], variant: dict[str, Path], heldout: list[dict], manifest: dict,
            providers: list[str], log=print) -> dict:
    """Features and greedy captions of the variant's graphs against the source's, on the same providers."""
    import onnxruntime as ort

    reference, converted = ({role: ort.InferenceSession(str(path), providers=providers) for role, path in graphs.items()}
                            for graphs in (source, variant))
    preprocessing, special, max_length = manifest["preprocessing"], manifest["special_tokens"], manifest["max_length"]
    same, worst, spread = 0, 0.0, []
    for first in range(0, len(heldout), 16):
        images = np.stack([load_image(Path(h["image"]), preprocessing) for h in heldout[first:first + 16]])
        (want,) = reference["encoder"].run(["features"], {"image": images})
        (got,) = converted["encoder"].run(["features"], {"image": images})
        worst = max(worst, float(np.abs(want - got).max()))
        spread.append(want)
        a = onnx_greedy(reference, images, special, max_length)
        b = onnx_greedy(converted, images, special, max_length)
        same += sum(x == y for x, y in zip(a, b))
    feature_spread = float(np.concatenate(spread).std(0).mean())
    figures = {"providers": converted["encoder"].get_providers(),
               "images": len(heldout),
               "greedy_captions_identical": f"{same}/{len(heldout)}",
               "agreement": round(same / len(heldout), 4),
               "max_abs_feature_diff": worst,
               "feature_spread": feature_spread}
    log(f"fp16 on {figures['providers'][0]}: greedy captions {same}/{len(heldout)} identical to fp32, "
        f"max |feature diff| {worst:.2e} (features vary by {feature_spread:.2e} across images)")
    return figures


def make_variant(source: Path, run_dir: Path, out: Path, name: str, images: int, min_agreement: float,
                 providers: list[str], log=print) -> dict:
    """Convert, check and write the fp16 variant of `source`; returns its manifest."""
    manifest = json.loads((source / "bundle.json").read_text())
    source_name = manifest["name"]
    source_graphs = {role: source / graph["file"] for role, graph in manifest["graphs"].items()}
    if manifest.get("precision", {}).get("encoder", "float32") != "float32":
        raise VariantError(f"{source} is already a {manifest['precision']['encoder']} bundle; convert its fp32 source")
    heldout = json.loads((run_dir / "heldout.json").read_text())[:images]
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        started = time.time()
        clamped = convert_encoder(source_graphs["encoder"], staging / "encoder.onnx")
        log(f"converted the encoder to float16 in {time.time() - started:.1f}s ({clamped} weights clamped "
            "into float16's range)")
        for role, graph in manifest["graphs"].items():
            if role != "encoder":  # the decoder graphs, plain and optimised, as they are
                for key in ("file", "optimized_file"):
                    if graph.get(key):
                        shutil.copy(source / graph[key], staging)
        shutil.copy(source / manifest["vocabulary"]["file"], staging)
        # The CPU-optimised encoder copy is not converted: onnxruntime optimises the fp16 graph
        # for whichever provider loads it.
        manifest["graphs"]["encoder"] = {k: v for k, v in manifest["graphs"]["encoder"].items()
                                         if k != "optimized_file"}
        manifest.update(name=name, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        precision={role: "float16" if role == "encoder" else "float32" for role in manifest["graphs"]})
        manifest["description"] += " fp16 variant: float16 encoder for GPU serving, float32 decoder."
        figures = compare(source_graphs, {role: staging / graph["file"] for role, graph in manifest["graphs"].items()},
                          heldout, manifest, providers, log)
        figures["clamped_weights"] = clamped
        if figures["agreement"] < min_agreement:
            raise VariantError(f"fp16 greedy captions agree with fp32 on {figures['greedy_captions_identical']} "
                               f"held-out images, below --min-agreement {min_agreement}; not written")
        manifest["checksums"] = {p.name: "sha256:" + sha256(p) for p in sorted(staging.iterdir())}
        manifest["tools"]["onnxconverter-common"] = version("onnxconverter-common")
        manifest["provenance"]["variant_of"] = {"name": source_name, "path": str(source),
                                                "bundle_json_sha256": sha256(source / "bundle.json")}
        manifest["provenance"]["parity"]["fp16_vs_fp32"] = figures  # beside the fp32 export's own parity
        (staging / "bundle.json").write_text(json.dumps(manifest, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return manifest


def default_providers() -> list[str]:
    """CUDA when this onnxruntime has it (the variant's real target), else the CPU."""
    import onnxruntime as ort

    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the fp16 variant of a model bundle (for GPUs).")
    parser.add_argument("--bundle", type=Path, required=True, help="the fp32 bundle, e.g. onnx_models/demo")
    parser.add_argument("--run", type=Path, required=True, help="its training run (held-out images for the check)")
    parser.add_argument("--out", type=Path, required=True, help="variant folder to write, e.g. onnx_models/demo-fp16")
    parser.add_argument("--name", help="bundle name (default: the --out folder's name)")
    parser.add_argument("--images", type=int, default=200, help="held-out images to compare captions on")
    parser.add_argument("--min-agreement", type=float, default=0.98,
                        help="share of greedy captions that must equal fp32's (default 0.98)")
    args = parser.parse_args(argv)
    problems = []
    if not (args.bundle / "bundle.json").is_file():
        problems.append(f"{args.bundle} has no bundle.json")
    if not (args.run / "heldout.json").is_file():
        problems.append(f"{args.run} has no heldout.json (not a finished training run)")
    if args.images <= 0:
        problems.append("--images must be > 0")
    if not 0 <= args.min_agreement <= 1:
        problems.append("--min-agreement must be between 0 and 1")
    if problems:
        print(f"error: {'; '.join(problems)}", file=sys.stderr)
        return 2
    try:
        make_variant(args.bundle, args.run, args.out, args.name or args.out.name, args.images, args.min_agreement,
                     default_providers())
    except VariantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote bundle {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

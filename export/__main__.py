"""Export a trained run to a self-describing ONNX model bundle.

Usage: python -m export --run runs/demo --out onnx_models/demo

Converts the encoder, decoder-init and decoder-step graphs with tf2onnx, writes an
onnxruntime-optimised copy of each, checks parity with Keras (fails loudly on a mismatch),
and writes bundle.json: everything the server needs, with provenance and parity figures.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .checksums import sha256
from .parity import ParityError, compare, load_image, onnx_greedy, random_inputs
from .specs import graph_specs

BUNDLE_FORMAT = "caption-bundle/1"
RANDOM_ENCODER_NOTE = ("The encoder's weights are seeded-random, not ImageNet-trained: ImageNet weights and "
                       "Flickr8k/COCO cannot be downloaded where this model was built. It captions the "
                       "synthetic shapes scenes it was trained on, not photographs.")


def check_parity(keras_models: dict, specs, paths: dict, run: dict, heldout: list[dict], vocab_words: list[str],
                 images: int, log=print) -> dict:
    """Compare every graph with Keras and greedy captions with the run's Keras captions."""
    import onnxruntime as ort

    sessions = {s.role: ort.InferenceSession(str(paths[s.role]), providers=["CPUExecutionProvider"]) for s in specs}
    rng = np.random.default_rng(0)
    vocab_size = run["decoder"]["vocab_size"]
    figures: dict[str, dict] = {}
    failures = []
    real_images = np.stack([load_image(Path(h["image"]), run["preprocessing"]) for h in heldout[:4]])
    # Real decoder inputs are the features and states that real images lead to.
    (features,) = sessions["encoder"].run(["features"], {"image": real_images})
    h, c, context = sessions["decoder_init"].run(["h", "c", "context"], {"features": features})
    tokens = rng.integers(0, vocab_size, size=(len(real_images), 1), dtype=np.int32)
    real_inputs = {"encoder": {"image": real_images}, "decoder_init": {"features": features},
                   "decoder_step": {"token": tokens, "h": h, "c": c, "context": context}}
    for spec in specs:
        random_feeds = random_inputs(spec, 3, rng, vocab_size, features.mean(0))
        random_diff = compare(keras_models[spec.role], sessions[spec.role], spec, random_feeds)
        real_diff = compare(keras_models[spec.role], sessions[spec.role], spec, real_inputs[spec.role])
        worst_random = max(d for d, _ in random_diff.values())
        worst_real = max(d for d, _ in real_diff.values())
        figures[spec.role] = {"max_abs_diff_random": worst_random, "max_abs_diff_real": worst_real,
                              "atol": spec.atol, "rtol": spec.rtol}
        log(f"parity {spec.role}: max |onnx - keras| random {worst_random:.2e}, real {worst_real:.2e} "
            f"(atol {spec.atol:.0e}, rtol {spec.rtol:.0e})")
        for kind, diffs in (("random", random_diff), ("real", real_diff)):
            failures += [f"{spec.role}.{name} on {kind} inputs: max |onnx - keras| = {d:.3e} beyond tolerance"
                         for name, (d, ok) in diffs.items() if not ok]

    sample = heldout[:images]
    same = 0
    for first in range(0, len(sample), 16):
        batch = sample[first:first + 16]
        ids = onnx_greedy(sessions, np.stack([load_image(Path(h["image"]), run["preprocessing"]) for h in batch]),
                          run["special_tokens"], run["max_length"])
        for h, caption_ids in zip(batch, ids):
            caption = " ".join(vocab_words[i] for i in caption_ids)
            if caption == h["keras_greedy"]:
                same += 1
            else:
                failures.append(f"greedy caption differs on {h['image']}: onnx {caption!r}, keras {h['keras_greedy']!r}")
    figures["greedy_captions_identical"] = f"{same}/{len(sample)}"
    log(f"parity greedy captions: {same}/{len(sample)} identical to Keras")
    if failures:
        raise ParityError("export parity failed:\n  " + "\n  ".join(failures[:20]))
    return figures


def export(run_dir: Path, out: Path, name: str, parity_images: int, log=print) -> dict:
    """Convert, optimise, check and write the bundle; returns the manifest."""
    import keras
    import onnx

    from .convert import OPSET, convert, optimize

    run = json.loads((run_dir / "run.json").read_text())
    heldout = json.loads((run_dir / "heldout.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    vocab = json.loads((run_dir / "vocab.json").read_text())
    specs = graph_specs(run)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    try:
        keras_models = {}
        for spec in specs:
            started = time.time()
            keras_models[spec.role] = keras.models.load_model(run_dir / spec.keras_file, compile=False)
            onnx.save(convert(keras_models[spec.role], spec, OPSET), staging / spec.onnx_file)
            optimize(staging / spec.onnx_file, staging / spec.optimized_file)
            log(f"converted {spec.role} in {time.time() - started:.1f}s")
        # Both copies are checked: the plain graphs, and the optimised ones the server runs.
        parity = {variant: check_parity(keras_models, specs, {s.role: staging / name(s) for s in specs}, run,
                                        heldout, vocab["words"], parity_images, lambda m: log(f"[{variant}] {m}"))
                  for variant, name in (("onnx", lambda s: s.onnx_file), ("optimized", lambda s: s.optimized_file))}
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.copy(run_dir / "vocab.json", staging / "vocab.json")
    files = [s.onnx_file for s in specs] + [s.optimized_file for s in specs] + ["vocab.json"]
    random_encoder = run["encoder"]["weights"].startswith("random:")
    manifest = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "description": ("InceptionV3 + LSTM caption model. " + (RANDOM_ENCODER_NOTE if random_encoder else "")).strip(),
        "graphs": {s.role: {"file": s.onnx_file, "optimized_file": s.optimized_file,
                            "inputs": [t.as_dict() for t in s.inputs], "outputs": [t.as_dict() for t in s.outputs]}
                   for s in specs},
        "vocabulary": {"file": "vocab.json", "size": len(vocab["words"])},
        "special_tokens": run["special_tokens"],
        "max_length": run["max_length"],
        "preprocessing": run["preprocessing"],
        "opset": OPSET,
        "checksums": {f: "sha256:" + sha256(staging / f) for f in files},
        "tools": _tool_versions(),
        "provenance": {
            "dataset": run["dataset"],
            "encoder": run["encoder"],
            "encoder_weights_random": random_encoder,
            "decoder": run["decoder"],
            "training": run["training"],
            **({"notes": run["notes"]} if run.get("notes") else {}),
            "metrics": metrics,
            "parity": parity,
        },
    }
    (staging / "bundle.json").write_text(json.dumps(manifest, indent=2))
    # Swap in the finished bundle only now, so a failed export never leaves a half-written one.
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return manifest


def _tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tensorflow
    import tf2onnx

    return {"tensorflow": tensorflow.__version__, "keras": version("keras"), "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a trained run to an ONNX model bundle.")
    parser.add_argument("--run", type=Path, required=True, help="training run folder (from training.train)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write, e.g. onnx_models/demo")
    parser.add_argument("--name", help="bundle name (default: the --out folder's name)")
    parser.add_argument("--parity-images", type=int, default=64, help="held-out images whose greedy captions must match")
    args = parser.parse_args(argv)
    missing = [f for f in ("run.json", "heldout.json", "metrics.json", "vocab.json") if not (args.run / f).is_file()]
    if missing:
        print(f"error: {args.run} is not a finished training run (missing {', '.join(missing)})", file=sys.stderr)
        return 2
    try:
        export(args.run, args.out, args.name or args.out.name, args.parity_images)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote bundle {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export a trained run to a self-describing ONNX model bundle.

Usage: python -m export --run runs/demo --out onnx_models/demo

Converts the encoder, decoder-init and decoder-step graphs with tf2onnx, writes an
onnxruntime-optimised copy of each, checks parity with Keras through the server's own
preprocessing and decoding (fails loudly on a mismatch), and writes bundle.json: everything
the server needs, with provenance and parity figures. See export.writer.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .parity import ParityError
from .writer import RUN_FILES, export


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a trained run to an ONNX model bundle.")
    parser.add_argument("--run", type=Path, required=True, help="training run folder (from training.train)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write, e.g. onnx_models/demo")
    parser.add_argument("--name", help="bundle name (default: the --out folder's name)")
    parser.add_argument("--parity-images", type=int, default=64, help="held-out images whose greedy captions must match")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0,
                        help="the server never repeats an n-gram of this size within a caption (default 0: no rule)")
    args = parser.parse_args(argv)
    missing = [f for f in RUN_FILES if not (args.run / f).is_file()]
    if missing:
        print(f"error: {args.run} is not a finished training run (missing {', '.join(missing)})", file=sys.stderr)
        return 2
    if args.parity_images < 1 or args.no_repeat_ngram_size < 0:
        print("error: --parity-images must be at least 1 and --no-repeat-ngram-size at least 0", file=sys.stderr)
        return 2
    try:
        export(args.run, args.out, args.name or args.out.name, args.parity_images,
               no_repeat_ngram_size=args.no_repeat_ngram_size)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote bundle {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

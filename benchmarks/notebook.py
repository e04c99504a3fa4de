"""An imported notebook captioner served by this project, against the notebook's own loop.

Usage: python -m benchmarks.notebook [--images 12] [--results benchmarks/results]

Builds the classic merge LSTM over a seeded-random InceptionV3 (benchmarks.notebook_models),
imports it with export.from_keras, and times one caption at a time, greedy, on held-out scenes:
- the notebook: `encoder.predict(image)`, then `model.predict([photo, pad_sequences([seq])])` once
  per word on the whole prefix, exactly as the notebooks write it;
- the bundle: CaptionEngine.caption (onnxruntime; the encoder, then one decoder step per word).
Both make the same captions (export.from_keras checks that before writing). Results:
notebook.json and notebook.md, with the machine's sgemm peak and processor features beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def notebook_caption(encoder, model, image: np.ndarray, wordtoix: dict, ixtoword: dict, max_length: int):
    """The notebooks' greedy loop, one image: returns (words, seconds in the encoder, seconds decoding)."""
    started = time.perf_counter()
    photo = encoder.predict(image[None], verbose=0)
    encoded = time.perf_counter()
    in_text = "startseq"
    for _ in range(max_length):
        sequence = [wordtoix[w] for w in in_text.split() if w in wordtoix]
        padded = np.zeros((1, max_length), np.float32)
        padded[0, max_length - len(sequence[-max_length:]):] = sequence[-max_length:]  # pad_sequences
        word = ixtoword.get(int(np.argmax(model.predict([photo, padded], verbose=0))))
        if word is None:
            break
        in_text += " " + word
        if word == "endseq":
            break
    words = in_text.split()[1:]
    return [w for w in words if w != "endseq"], encoded - started, time.perf_counter() - encoded


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="held-out scenes to caption (at most 12)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import pickle

    import keras

    from bundle.format import load_bundle
    from bundle.preprocess import load_image
    from export.from_keras import load_keras_model
    from server.engine import CaptionEngine

    from .floor import machine

    with tempfile.TemporaryDirectory() as scratch:
        models, bundle_dir = Path(scratch) / "notebook", Path(scratch) / "bundle"
        subprocess.run([sys.executable, "-m", "benchmarks.notebook_models", str(models), "--inception"], check=True)
        subprocess.run([sys.executable, "-m", "export.from_keras", "--decoder", str(models / "lstm_h5/model.h5"),
                        "--vocabulary", str(models / "lstm_h5/vocab.pkl"), "--encoder", "inception_v3",
                        "--encoder-weights", str(models / "inception_v3.weights.h5"), "--images",
                        str(models / "images"), "--parity-images", str(args.images), "--out", str(bundle_dir)],
                       check=True)
        model = load_keras_model(models / "lstm_h5/model.h5", unsafe_lambda=False)
        encoder = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg")
        encoder.load_weights(str(models / "inception_v3.weights.h5"))
        wordtoix, ixtoword = pickle.loads((models / "lstm_h5/vocab.pkl").read_bytes())
        max_length = int(model.inputs[1].shape[-1])
        engine = CaptionEngine(load_bundle(bundle_dir))
        preprocessing = engine.preprocessing
        images = [load_image(p, preprocessing) for p in sorted((models / "images").glob("*.jpg"))[:args.images]]

        notebook_caption(encoder, model, images[0], wordtoix, ixtoword, max_length)  # warm-up (tracing)
        engine.caption(images[0][None])
        rows = []
        for image in images:
            words, encode_s, decode_s = notebook_caption(encoder, model, image, wordtoix, ixtoword, max_length)
            started = time.perf_counter()
            result = engine.caption(image[None])
            served_s = time.perf_counter() - started
            served = engine.words(result.hypotheses[0][0].tokens)
            rows.append({"words": len(words), "same_caption": served == words,
                         "notebook_ms": (encode_s + decode_s) * 1e3, "notebook_decode_ms": decode_s * 1e3,
                         "served_ms": served_s * 1e3, "served_decode_ms": result.timings_ms["decode"]})
    median = lambda key: float(np.median([r[key] for r in rows]))  # noqa: E731
    results = {
        "machine": machine(),
        "images": len(rows), "captions_identical": sum(r["same_caption"] for r in rows),
        "mean_words": float(np.mean([r["words"] for r in rows])),
        "notebook_ms_per_caption": median("notebook_ms"), "served_ms_per_caption": median("served_ms"),
        "notebook_decode_ms": median("notebook_decode_ms"), "served_decode_ms": median("served_decode_ms"),
    }
    results["speedup_per_caption"] = results["notebook_ms_per_caption"] / results["served_ms_per_caption"]
    results["speedup_decoding"] = results["notebook_decode_ms"] / results["served_decode_ms"]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "notebook.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results / "notebook.md").write_text(
        "# An imported notebook model against the notebook's own loop\n\n"
        f"Machine: {results['machine']}. "
        f"Merge LSTM over a seeded-random InceptionV3, one caption at a time, greedy, median of "
        f"{results['images']} held-out scenes ({results['mean_words']:.1f} words a caption; "
        f"{results['captions_identical']}/{results['images']} captions identical).\n\n"
        "| | notebook loop (Keras predict per word) | served bundle (onnxruntime) | speed-up |\n"
        "| --- | --- | --- | --- |\n"
        f"| whole caption (encoder + decoding) | {results['notebook_ms_per_caption']:.1f} ms | "
        f"{results['served_ms_per_caption']:.1f} ms | {results['speedup_per_caption']:.1f}x |\n"
        f"| decoding only | {results['notebook_decode_ms']:.1f} ms | {results['served_decode_ms']:.2f} ms | "
        f"{results['speedup_decoding']:.0f}x |\n")
    print((args.results / "notebook.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

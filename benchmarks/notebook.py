"""Imported notebook captioners served by this project, against the notebooks' own loop, for each
decoding kind.

Usage: python -m benchmarks.notebook [--images 12] [--results benchmarks/results]

Builds three decoders over a seeded-random InceptionV3 (training.notebook_zoo --inception): a masked
LSTM merge model, which the importer steps one word at a time; an unmasked GRU, which reads its
padding and so is served whole-prefix (the whole model on the padded prefix at every word); and a
Transformer decoder (causal self-attention, words attending to the image), served whole-prefix.
Each is imported with export.from_keras and timed one caption at a time, greedy, on held-out scenes:
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


def measure(models: Path, name: str, entry: dict, bundle_dir: Path, count: int) -> dict:
    """Import one zoo model and time it against its notebook loop on `count` held-out scenes."""
    import keras

    from bundle.format import load_bundle
    from bundle.preprocess import load_image
    from export.keras_files import load_keras_model
    from export.notebook_vocabulary import read_vocabulary
    from server.engine import CaptionEngine

    subprocess.run([sys.executable, "-m", "export.from_keras", "--decoder", str(models / entry["decoder"]),
                    "--vocabulary", str(models / entry["vocabulary"]), "--encoder", "InceptionV3",
                    "--encoder-weights", str(models / "inception_v3.weights.h5"), "--images",
                    str(models / "images"), "--parity-images", str(count), "--out", str(bundle_dir)], check=True)
    model = load_keras_model(models / entry["decoder"])
    encoder = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg")
    encoder.load_weights(str(models / "inception_v3.weights.h5"))
    vocab = read_vocabulary(models / entry["vocabulary"], int(model.outputs[0].shape[-1]))
    ixtoword = {i: w for i, w in enumerate(vocab.words) if i}
    wordtoix = {w: i for i, w in ixtoword.items()}
    max_length = int(model.inputs[1].shape[-1])
    engine = CaptionEngine(load_bundle(bundle_dir))
    images = [load_image(p, engine.preprocessing) for p in sorted((models / "images").glob("*.jpg"))[:count]]

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
    result = {
        "model": name, "decoder_kind": entry["kind"], "description": load_bundle(bundle_dir).manifest["description"],
        "images": len(rows), "captions_identical": sum(r["same_caption"] for r in rows),
        "mean_words": float(np.mean([r["words"] for r in rows])),
        "notebook_ms_per_caption": median("notebook_ms"), "served_ms_per_caption": median("served_ms"),
        "notebook_decode_ms": median("notebook_decode_ms"), "served_decode_ms": median("served_decode_ms"),
    }
    result["speedup_per_caption"] = result["notebook_ms_per_caption"] / result["served_ms_per_caption"]
    result["speedup_decoding"] = result["notebook_decode_ms"] / result["served_decode_ms"]
    return result


def markdown(results: dict) -> str:
    """notebook.md from notebook.json."""
    lines = ["# Imported notebook models against the notebooks' own loop\n",
             f"Machine: {results['machine']}. Decoders over a seeded-random InceptionV3, one caption at a "
             "time, greedy, medians over held-out scenes. *step*: the importer steps the RNN one word at a time; "
             "*whole_prefix*: every word re-runs the whole model on the padded prefix (the GRU reads its "
             "padding; the Transformer's positions attend to each other).\n",
             "| decoding kind | model | captions identical | words a caption | notebook loop, whole caption | "
             "served, whole caption | speed-up | notebook, decoding only | served, decoding only | speed-up |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["kinds"]:
        lines.append(f"| {row['decoder_kind']} | {row['model']} | {row['captions_identical']}/{row['images']} | "
                     f"{row['mean_words']:.1f} | {row['notebook_ms_per_caption']:.1f} ms | "
                     f"{row['served_ms_per_caption']:.1f} ms | **{row['speedup_per_caption']:.1f}x** | "
                     f"{row['notebook_decode_ms']:.1f} ms | {row['served_decode_ms']:.2f} ms | "
                     f"{row['speedup_decoding']:.0f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="held-out scenes to caption (at most 12)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from training.notebook_zoo import INCEPTION_MODELS

    from .floor import machine

    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch) / "notebook"
        subprocess.run([sys.executable, "-m", "training.notebook_zoo", str(models), "--inception"], check=True)
        entries = json.loads((models / "zoo.json").read_text())["models"]
        kinds = [measure(models, name, entries[name], Path(scratch) / name, args.images) for name in INCEPTION_MODELS]
    results = {"machine": machine(), "kinds": kinds}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "notebook.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results / "notebook.md").write_text(markdown(results))
    print((args.results / "notebook.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

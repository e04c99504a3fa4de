"""Where an attention decoder looks: one image, its greedy caption, and each word's attention
over the encoder's map drawn on the image.

Usage: python -m training.attention_map --run runs/demo --image scene.png --out attention.png

Reads the run's Keras models (encoder, decoder_init, decoder_step); the weights of each word are
recomputed from the step model's own layers (the query, the projected map and the learned scale
of its additive attention), so nothing about the exported graphs changes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def attention_weights(init_model, step_model, features: np.ndarray, start: int, end: int,
                      max_length: int) -> tuple[list[int], np.ndarray]:
    """Greedy tokens for one image's features [1, P, F] and each token's attention [T, P]."""
    import keras

    query_of = keras.Model(step_model.inputs, step_model.get_layer("attention_query").output)
    scale = np.asarray(step_model.get_layer("attention").scale)
    state = [np.asarray(x) for x in init_model(features, training=False)]
    memory = state[3][0]                                    # [P, A]
    token, tokens, weights = start, [], []
    for _ in range(max_length + 1):
        inputs = [np.array([[token]], np.int32), *state]
        query = np.asarray(query_of(inputs, training=False))[0, 0]   # [A]
        scores = (scale * np.tanh(query[None, :] + memory)).sum(-1)
        weights.append(np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum())
        log_probs, h, c = (np.asarray(x) for x in step_model(inputs, training=False)[:3])
        state = [h, c, *state[2:]]
        token = int(log_probs[0].argmax())
        if token == end:
            break
        tokens.append(token)
    return tokens, np.stack(weights[:len(tokens)])


def draw(image_path: Path, words: list[str], weights: np.ndarray, out: Path) -> None:
    """The image, then one panel per word with its attention (nearest-upsampled grid) over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    image = np.asarray(Image.open(image_path).convert("RGB"))
    side = int(round(np.sqrt(weights.shape[1])))
    columns = min(len(words) + 1, 6)
    rows = -(-(len(words) + 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.4 * rows))
    axes = np.atleast_1d(axes).ravel()
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    for ax, word, w in zip(axes[1:], words, weights):
        ax.imshow(image)
        ax.imshow(w.reshape(side, side), cmap="magma", alpha=0.6, interpolation="nearest",
                  extent=(0, image.shape[1], image.shape[0], 0))
        ax.set_title(word, fontsize=9)
    for ax in axes:
        ax.axis("off")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a training run of an attention decoder")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    run_file = args.run / "run.json"
    if not run_file.is_file() or not args.image.is_file():
        print(f"error: {run_file if not run_file.is_file() else args.image} does not exist", file=sys.stderr)
        return 2
    run = json.loads(run_file.read_text())
    if not run["decoder"].get("attention"):
        print(f"error: {args.run} is a pooled decoder: it has no attention to draw", file=sys.stderr)
        return 2
    import keras

    from bundle.preprocess import load_image

    models = {role: keras.models.load_model(args.run / f"{role}.keras", compile=False)
              for role in ("encoder", "decoder_init", "decoder_step")}
    features = np.asarray(models["encoder"](load_image(args.image, run["preprocessing"])[None], training=False))
    words = json.loads((args.run / "vocab.json").read_text())["words"]
    special = run["special_tokens"]
    tokens, weights = attention_weights(models["decoder_init"], models["decoder_step"], features, special["start"],
                                        special["end"], run["max_length"])
    draw(args.image, [words[t] for t in tokens], weights, args.out)
    print(f"{' '.join(words[t] for t in tokens)} -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

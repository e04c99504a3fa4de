"""A trained run -> a model bundle: convert each graph, optimise it, check parity, write bundle.json.

Everything is built in a staging folder (bundle.format.staged_bundle), so a failed export never
leaves a half-written bundle behind.
"""
from __future__ import annotations

import json
import shutil
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from bundle.format import finish, staged_bundle
from bundle.preprocess import input_shape
from bundle.specs import GraphSpec, graph_specs

from .parity import check_parity

RANDOM_ENCODER_NOTE = ("InceptionV3's weights are seeded-random, not ImageNet-trained: ImageNet weights and "
                       "Flickr8k/COCO cannot be downloaded where this model was built. It captions the "
                       "synthetic shapes scenes it was trained on, not photographs.")
# What a finished training run folder holds (training.train writes it; heldout_features.npy is
# absent from runs of earlier versions, whose parity then rests on the captions alone).
RUN_FILES = ("run.json", "heldout.json", "metrics.json", "vocab.json")


def run_specs(run: dict) -> list[GraphSpec]:
    """The graphs of a trained run, shaped by its run.json."""
    decoder = run["decoder"]
    feature_shape = tuple(run["encoder"].get("feature_shape", [run["encoder"]["feature_dim"]]))  # older runs: pooled
    return graph_specs(input_shape(run["preprocessing"]), feature_shape, decoder["units"],
                       decoder["embedding_dim"], decoder["vocab_size"], decoder.get("attention", False))


def describe_model(run: dict) -> str:
    """One sentence on the model's architecture, for the manifest's description."""
    learned = run["encoder"].get("learned_part")
    if learned:
        return (f"InceptionV3 + LSTM caption model with soft attention over an 8x8 map that a small learned part "
                f"of the encoder ({learned['share_of_trunk']:.1%} of the trunk's multiply-adds) makes from the frozen "
                f"InceptionV3's {' and '.join(learned['reads'])} maps.")
    if run["decoder"].get("attention"):
        return ("InceptionV3 + LSTM caption model with soft attention over the encoder's last map "
                "(every step looks at each of its positions).")
    return "InceptionV3 + LSTM caption model on the encoder's pooled features."


def graph_entry(spec: GraphSpec) -> dict:
    """A graph as bundle.json describes it."""
    return {"file": spec.onnx_file, "optimized_file": spec.optimized_file,
            "inputs": [t.as_dict() for t in spec.inputs], "outputs": [t.as_dict() for t in spec.outputs]}


def export(run_dir: Path, out: Path, name: str, parity_images: int, log=print, no_repeat_ngram_size: int = 0) -> dict:
    """Convert, optimise, check and write the bundle; returns the manifest."""
    import keras
    import onnx

    from .convert import OPSET, convert, optimize

    run = json.loads((run_dir / "run.json").read_text())
    heldout = json.loads((run_dir / "heldout.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    vocab = json.loads((run_dir / "vocab.json").read_text())
    features_file = run_dir / "heldout_features.npy"
    training_features = np.load(features_file) if features_file.is_file() else None
    specs = run_specs(run)
    random_encoder = run["encoder"]["weights"].startswith("random:")
    manifest = {
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "description": (describe_model(run) + " " + (RANDOM_ENCODER_NOTE if random_encoder else "")).strip(),
        "graphs": {s.role: graph_entry(s) for s in specs},
        "vocabulary": {"file": "vocab.json", "size": len(vocab["words"])},
        "special_tokens": run["special_tokens"],
        "max_length": run["max_length"],
        "preprocessing": run["preprocessing"],
        "decoding": {"no_repeat_ngram_size": no_repeat_ngram_size},
        "opset": OPSET,
        "tools": tool_versions(),
        "provenance": {
            "dataset": run["dataset"],
            "encoder": run["encoder"],
            "encoder_weights_random": random_encoder,
            "decoder": run["decoder"],
            "training": run["training"],
            **({"notes": run["notes"]} if run.get("notes") else {}),
            "metrics": metrics,
        },
    }
    with staged_bundle(out) as staging:
        keras_models = {}
        for spec in specs:
            started = time.time()
            keras_models[spec.role] = keras.models.load_model(run_dir / f"{spec.role}.keras", compile=False)
            onnx.save(convert(keras_models[spec.role], spec, OPSET), staging / spec.onnx_file)
            optimize(staging / spec.onnx_file, staging / spec.optimized_file)
            log(f"converted {spec.role} in {time.time() - started:.1f}s")
        if training_features is None:
            log(f"{run_dir} has no heldout_features.npy (an older run): the served preprocessing is checked "
                "through the captions only")
        # Both copies are checked: the plain graphs, and the optimised ones the server runs.
        manifest["provenance"]["parity"] = {
            variant: check_parity(keras_models, specs, {s.role: staging / file(s) for s in specs}, manifest,
                                  vocab["words"], heldout, training_features, parity_images,
                                  lambda m, variant=variant: log(f"[{variant}] {m}"))
            for variant, file in (("onnx", lambda s: s.onnx_file), ("optimized", lambda s: s.optimized_file))}
        shutil.copy(run_dir / "vocab.json", staging / "vocab.json")
        manifest = finish(staging, manifest)
    return manifest


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import tensorflow
    import tf2onnx

    return {"tensorflow": tensorflow.__version__, "keras": version("keras"), "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}

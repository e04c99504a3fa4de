"""Parity of the exported graphs with Keras, checked through the very code that serves.

Each graph's outputs are compared with Keras' on random and real inputs (max |ONNX - Keras|
within the spec's tolerance); the encoder's features on held-out images, preprocessed by the
contract as the server will (bundle.preprocess), are compared with the features training used;
and greedy captions, decoded as the server decodes them (bundle.sessions, bundle.decoding),
must equal the Keras captions training wrote. Every mismatch is collected into one ParityError.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from bundle.decoding import decode_greedy, words_of
from bundle.preprocess import load_image
from bundle.sessions import SessionDecoder, SessionEncoder
from bundle.specs import GraphSpec


class ParityError(RuntimeError):
    """The exported model does not reproduce the Keras model."""


def greedy_ids(sessions: dict, graphs: dict, features: np.ndarray, special: dict, max_length: int,
               no_repeat_ngram_size: int = 0) -> list[list[int]]:
    """Greedy token ids from encoder features, decoded as the server decodes them."""
    decoder = SessionDecoder(sessions["decoder_init"], sessions["decoder_step"], graphs)
    hypotheses = decode_greedy(decoder.step, decoder.initial_state(features), len(features), special["start"],
                               special["end"], max_length, no_repeat_ngram_size)
    return [h.tokens for h in hypotheses]


def random_inputs(spec: GraphSpec, batch: int, rng: np.random.Generator, vocab_size: int,
                  feature_scale: np.ndarray) -> dict:
    """Inputs in each tensor's working range: images in [-1, 1], states in (-1, 1), any token,
    and features (non-negative pooled activations) between 0 and twice `feature_scale`."""
    feeds = {}
    for t in spec.inputs:
        shape = (batch, *t.shape[1:])
        if t.dtype == "int32":
            feeds[t.name] = rng.integers(0, vocab_size, size=shape, dtype=np.int32)
        elif t.key == "features":
            feeds[t.name] = (feature_scale * rng.uniform(0, 2, size=shape)).astype(np.float32)
        else:
            feeds[t.name] = rng.uniform(-1, 1, size=shape).astype(np.float32)
    return feeds


def compare(keras_model, session: ort.InferenceSession, spec: GraphSpec, feeds: dict) -> dict[str, tuple[float, bool, float]]:
    """For each output on one batch: (max |ONNX - Keras|, within tolerance, the atol applied). Tolerance
    is numpy.allclose's: |diff| <= atol + rtol * |keras|, so large activations get float32 slack
    (the encoder's atol scaled by its largest feature, GraphSpec.close)."""
    inputs = [feeds[t.name] for t in spec.inputs]
    keras_out = keras_model(inputs if len(inputs) > 1 else inputs[0], training=False)
    keras_out = keras_out if isinstance(keras_out, (list, tuple)) else [keras_out]
    onnx_out = session.run([t.name for t in spec.outputs], feeds)
    result = {}
    for t, k, o in zip(spec.outputs, keras_out, onnx_out):
        k = np.asarray(k)
        result[t.name] = (float(np.max(np.abs(k - o))), spec.close(o, k), spec.effective_atol(k))
    return result


def check_parity(keras_models: dict, specs: list[GraphSpec], paths: dict, manifest: dict, words: list[str],
                 heldout: list[dict], training_features: np.ndarray | None, images: int, log=print) -> dict:
    """Compare every graph with Keras, the served preprocessing with training's, and the served
    greedy captions with training's Keras captions. `manifest` is the bundle's (graphs,
    preprocessing, special tokens, max length); `training_features[i]` are the encoder
    features training computed for heldout[i] (None for a run that did not keep them)."""
    sessions = {s.role: ort.InferenceSession(str(paths[s.role]), providers=["CPUExecutionProvider"]) for s in specs}
    graphs, preprocessing = manifest["graphs"], manifest["preprocessing"]
    special, max_length = manifest["special_tokens"], manifest["max_length"]
    encoder = SessionEncoder(sessions["encoder"], graphs)
    state = SessionDecoder(sessions["decoder_init"], sessions["decoder_step"], graphs)
    rng = np.random.default_rng(0)
    vocab_size = len(words)
    figures: dict[str, dict] = {}
    failures = []
    sample = heldout[:images]
    served = [load_image(Path(h["image"]), preprocessing) for h in sample]
    features = np.concatenate([encoder(np.stack(served[i:i + 16])) for i in range(0, len(served), 16)])

    # Real decoder inputs are the features and states that real images lead to.
    real = features[:4]
    init_values = state.initial_state(real)
    tokens = rng.integers(0, vocab_size, size=(len(real), 1), dtype=np.int32)
    step_feeds = {state.names.token: tokens, **{state.names.step_inputs[k]: v
                                                  for k, v in zip(state.names.keys, init_values)}}
    real_inputs = {"encoder": {encoder.image: np.stack(served[:4])}, "decoder_init": {state.names.features: real},
                   "decoder_step": step_feeds}
    for spec in specs:
        random_feeds = random_inputs(spec, 3, rng, vocab_size, real.mean(0))
        random_diff = compare(keras_models[spec.role], sessions[spec.role], spec, random_feeds)
        real_diff = compare(keras_models[spec.role], sessions[spec.role], spec, real_inputs[spec.role])
        worst_random = max(d for d, _, _ in random_diff.values())
        worst_real = max(d for d, _, _ in real_diff.values())
        atol = max(a for _, _, a in real_diff.values())  # the encoder's: scaled by real features
        figures[spec.role] = {"max_abs_diff_random": worst_random, "max_abs_diff_real": worst_real,
                              "atol": atol, "rtol": spec.rtol}
        log(f"parity {spec.role}: max |onnx - keras| random {worst_random:.2e}, real {worst_real:.2e} "
            f"(atol {atol:.1e}, rtol {spec.rtol:.0e})")
        for kind, diffs in (("random", random_diff), ("real", real_diff)):
            failures += [f"{spec.role}.{name} on {kind} inputs: max |onnx - keras| = {d:.3e} beyond tolerance "
                         f"(atol {a:.1e}, rtol {spec.rtol:.0e})" for name, (d, ok, a) in diffs.items() if not ok]

    if training_features is not None:
        # The features the decoder was trained and evaluated on, against those the server will
        # compute: a bundle whose preprocessing differs from training's fails here.
        trained = training_features[:len(features)]
        spec = next(s for s in specs if s.role == "encoder")
        worst = float(np.abs(features - trained).max())
        figures["served_preprocessing"] = {"max_abs_feature_diff": worst, "images": len(features)}
        log(f"parity served preprocessing: max |features - training's| {worst:.2e} on {len(features)} held-out images")
        if not spec.close(features, trained):
            failures.append(f"the served preprocessing ({preprocessing}) gives other encoder features than training's "
                            f"on held-out images: max |diff| = {worst:.3e}; the bundle's preprocessing is not the "
                            "one the model was trained with")

    same = 0
    ids = greedy_ids(sessions, graphs, features, special, max_length)
    for h, caption_ids in zip(sample, ids):
        caption = " ".join(words_of(caption_ids, words, special.values()))
        if caption == h["keras_greedy"]:
            same += 1
        else:
            failures.append(f"greedy caption differs on {h['image']}: onnx {caption!r}, keras {h['keras_greedy']!r}")
    figures["greedy_captions_identical"] = f"{same}/{len(sample)}"
    log(f"parity greedy captions: {same}/{len(sample)} identical to Keras")
    if size := manifest.get("decoding", {}).get("no_repeat_ngram_size", 0):
        # Parity is of the graphs, so it decodes as Keras did; the rule's own effect is reported.
        changed = sum(a != b for a, b in zip(ids, greedy_ids(sessions, graphs, features, special, max_length, size)))
        figures["no_repeat_ngram"] = {"size": size, "greedy_captions_changed": f"{changed}/{len(sample)}"}
        log(f"no_repeat_ngram_size {size} changes {changed}/{len(sample)} greedy captions")
    if failures:
        raise ParityError("export parity failed:\n  " + "\n  ".join(failures[:20]))
    return figures

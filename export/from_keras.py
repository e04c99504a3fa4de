"""Import a captioning model trained in a classic Keras notebook into a bundle the server serves.

Usage:
  python -m export.from_keras --decoder model.h5 --vocabulary tokenizer.pkl \\
      --encoder inception_v3 --encoder-weights inception_v3_notop.h5 --out onnx_models/mine
  python -m export.from_keras --decoder model.keras --vocabulary tokenizer.json \\
      --encoder-model my_encoder.keras --preprocessing caffe --image-size 224 --out onnx_models/mine

The decoder is any notebook model of (image features, pre-padded word ids) -> next-word
probabilities, wherever it puts the image (init-inject, pre-inject, par-inject, merge; see
export.notebook_decoder); it becomes a decoder_init and a decoder_step graph, so that each word
costs one step instead of a pass over the whole prefix where that is exact. Before anything is written, the
bundle's greedy captions must equal the notebook's own predict-per-word loop on held-out images
(`--images DIR`, or generated scenes), and its per-step probabilities must agree with the
model's; otherwise nothing is written and the first differences are shown.
Exit status: 0 written, 1 parity failed, 2 a file or model the tool cannot use.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bundle.decoding import decode_greedy, words_of
from bundle.format import finish, staged_bundle
from bundle.preprocess import KERAS_MODES, input_shape, keras_preprocessing, load_image
from bundle.sessions import SessionDecoder, SessionEncoder
from bundle.specs import GraphSpec, decoder_specs

from .keras_encoders import ENCODERS, build_encoder, encoder_name
from .notebook_vocabulary import Vocabulary, VocabularyError, read_vocabulary
from .parity import ParityError
from .quiet import tensorflow_silenced
from .writer import graph_entry

if TYPE_CHECKING:  # Keras is imported when the tool runs, with TensorFlow's logging silenced
    from .notebook_decoder import NotebookDecoder

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Per-step next-word probabilities (padding aside), bundle against the Keras model. Stepping an
# RNN's cell and Keras' whole-sequence RNN add in different orders: up to 1e-6 on the zoo of
# training.notebook_zoo. A wrong weight or a misread layer moves them by hundredths or more.
PROBABILITY_ATOL = 1e-4


class ImportFailure(ValueError):
    """Inputs the tool cannot use; one line, exit status 2."""


def notebook_greedy(model, features: np.ndarray, decoder: NotebookDecoder, vocab: Vocabulary,
                    batch_size: int = 32) -> tuple[list[list[int]], list[list[np.ndarray]]]:
    """The notebooks' greedy loop, batched over images: at every step the padded prefix goes through
    the whole model and the most likely word is appended, until the end word or max_length words.
    Pre-padded (pad_sequences' default) the newest word is last; post-padded it is at position
    len(prefix) - 1, where a model that gives a word per position is read (`preds[0, t]`).
    Returns each caption's word ids (without start and end) and the probabilities the model gave
    at each of its steps (a softmax of its logits for a model that gives logits)."""
    from .notebook_decoder import next_word_probabilities, pad_prefixes

    length = decoder.max_length
    captions, probabilities = [], []
    for first in range(0, len(features), batch_size):
        batch = features[first:first + batch_size]
        prefixes = [[vocab.start] for _ in batch]
        done = np.zeros(len(batch), bool)
        steps = [[] for _ in batch]
        for _ in range(length):
            padded, positions = pad_prefixes(prefixes, length, decoder.padding)
            inputs = [batch, padded] if decoder.feature_input_first else [padded, batch]
            out = next_word_probabilities(model(inputs, training=False), positions, decoder.scores)
            for row in np.flatnonzero(~done):
                word = int(out[row].argmax())
                steps[row].append(out[row])
                prefixes[row].append(word)
                # The notebooks stop at the end word, and at an id their ixtoword lacks (0, padding).
                done[row] = word in (vocab.end, 0)
            if done.all():
                break
        for prefix in prefixes:
            ids = prefix[1:]
            captions.append(ids[:-1] if ids and ids[-1] in (vocab.end, 0) else ids)
        probabilities += steps
    return captions, probabilities


def bundle_greedy(sessions: dict, graphs: dict, images: np.ndarray, vocab: Vocabulary,
                  max_length: int) -> tuple[np.ndarray, list[list[int]]]:
    """Encoder features and greedy word ids through the bundle's graphs, as the server runs them."""
    features = SessionEncoder(sessions["encoder"], graphs)(images)
    decoder = SessionDecoder(sessions["decoder_init"], sessions["decoder_step"], graphs)
    hypotheses = decode_greedy(decoder.step, decoder.initial_state(features), len(images), vocab.start, vocab.end,
                               max_length)
    return features, [h.tokens for h in hypotheses]


def teacher_forced_probabilities(sessions: dict, graphs: dict, features: np.ndarray, path: list[int],
                                 vocab: Vocabulary) -> list[np.ndarray]:
    """The bundle's next-word probabilities at each step of one caption's word path."""
    decoder = SessionDecoder(sessions["decoder_init"], sessions["decoder_step"], graphs)
    state = decoder.initial_state(features[None])
    out = []
    for token in [vocab.start] + path:
        log_probs, state = decoder.step(np.array([[token]], np.int32), state)
        out.append(np.exp(log_probs[0]))
    return out


def keras_features(keras_encoder, images: np.ndarray) -> np.ndarray:
    """The Keras encoder's features of `images`, in batches of 8."""
    return np.concatenate([np.asarray(keras_encoder(images[i:i + 8], training=False))
                           for i in range(0, len(images), 8)])


def check_import_parity(expected_features: np.ndarray, model, decoder: NotebookDecoder, sessions: dict, graphs: dict,
                        images: np.ndarray, names: list[str], vocab: Vocabulary, encoder_spec: GraphSpec,
                        log=print, reference: tuple | None = None, max_length: int | None = None) -> dict:
    """The bundle against the Keras models on `images` (whose Keras encoder features are
    `expected_features`): features, greedy captions against the notebook loop (or `reference`:
    captions and step probabilities from another loop), and next-word probabilities along each of
    those captions."""
    failures = []
    reference, reference_probs = reference or notebook_greedy(model, expected_features, decoder, vocab)
    features, served = bundle_greedy(sessions, graphs, images, vocab, max_length or decoder.max_length)
    feature_diff = float(np.abs(features - expected_features).max())
    if not encoder_spec.close(features, expected_features):
        failures.append(f"encoder features differ from Keras': max |diff| {feature_diff:.3e}")
    same = 0
    worst_probability = 0.0
    for name, want, got, want_probs, row in zip(names, reference, served, reference_probs, features):
        got_probs = teacher_forced_probabilities(sessions, graphs, row, want, vocab)
        steps = min(len(want_probs), len(got_probs))
        # Id 0 is padding: the bundle never gives it probability, whatever the model does.
        worst = max(float(np.abs(a[1:] - b[1:]).max()) for a, b in zip(want_probs[:steps], got_probs[:steps]))
        worst_probability = max(worst_probability, worst)
        if worst > PROBABILITY_ATOL:
            failures.append(f"{name}: next-word probabilities differ by up to {worst:.2e} from the Keras model's")
        if want == got:
            same += 1
        else:
            show = lambda ids: " ".join(words_of(ids, vocab.words, vocab.special_tokens.values()))  # noqa: E731
            failures.append(f"{name}: served {show(got)!r}, the notebook loop says {show(want)!r}")
    figures = {"images": len(images), "greedy_captions_identical": f"{same}/{len(images)}",
               "max_abs_feature_diff": feature_diff, "max_abs_probability_diff": worst_probability,
               "probability_atol": PROBABILITY_ATOL}
    log(f"parity: greedy captions {same}/{len(images)} identical to the notebook loop; max |probability diff| "
        f"{worst_probability:.2e}; max |feature diff| {feature_diff:.2e}")
    if failures:
        raise ParityError("import parity failed:\n  " + "\n  ".join(failures[:12]))
    return figures


def release_memory() -> None:
    """Collect the garbage and hand freed heap back to the system (glibc keeps it otherwise), so that
    a big encoder's Keras weights and its ONNX copies are not resident at once."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to hand back this way
        pass


def parity_images(folder: Path | None, preprocessing: dict, count: int) -> tuple[np.ndarray, list[str]]:
    """Preprocessed images from `folder` (its first `count`, sorted), or generated scenes when None."""
    if folder is not None:
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
        if not paths:
            raise ImportFailure(f"--images {folder}: no image files")
        return np.stack([load_image(p, preprocessing) for p in paths]), [str(p) for p in paths]
    import io

    from training.synthetic import make_scene

    rng = np.random.default_rng(0)
    arrays = []
    for _ in range(count):
        image, _, _ = make_scene(rng)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        arrays.append(load_image(io.BytesIO(buffer.getvalue()), preprocessing))
    return np.stack(arrays), [f"generated scene {i}" for i in range(count)]


def import_model(args, log=print) -> dict:
    """Read, map, convert, check and write; returns the manifest."""
    import onnx
    import onnxruntime as ort

    from .convert import OPSET, convert, optimize
    from .keras_files import load_keras_model
    from .notebook_decoder import DecoderImportError, analyse, decoder_models
    from .writer import tool_versions

    model = load_keras_model(args.decoder, args.unsafe_lambda)
    try:
        decoder = analyse(model, args.padding)
    except DecoderImportError as exc:
        raise ImportFailure(f"{args.decoder}: {exc}") from None
    max_length = args.max_length or decoder.max_length
    if max_length > decoder.max_length:
        raise ImportFailure(f"--max-length {max_length} is over the model's input length {decoder.max_length}")
    try:
        vocab = read_vocabulary(args.vocabulary, decoder.vocab_size, args.start_word, args.end_word)
    except VocabularyError as exc:
        raise ImportFailure(f"{args.vocabulary}: {exc}") from None
    if args.encoder:
        recipe = ENCODERS[args.encoder]
        preprocessing = keras_preprocessing(recipe.mode, recipe.image_size)
        try:
            encoder = build_encoder(args.encoder, args.encoder_weights)
        except ValueError as exc:
            raise ImportFailure(str(exc)) from None
        encoder_info = {"name": args.encoder, "architecture": recipe.description, "weights": str(args.encoder_weights)}
    else:
        encoder = load_keras_model(args.encoder_model, args.unsafe_lambda)
        preprocessing = keras_preprocessing(args.preprocessing, args.image_size)
        encoder_info = {"model_file": str(args.encoder_model)}
    encoder_shape = tuple(encoder.outputs[0].shape[1:])
    if encoder_shape != decoder.feature_shape:
        raise ImportFailure(f"the encoder gives features of shape {encoder_shape}, the decoder takes "
                            f"{decoder.feature_shape}")
    if tuple(encoder.inputs[0].shape[1:]) != input_shape(preprocessing):
        raise ImportFailure(f"the encoder takes {tuple(encoder.inputs[0].shape[1:])} images, the preprocessing "
                            f"makes {input_shape(preprocessing)}; give --image-size")

    images, names = parity_images(args.images, preprocessing, args.parity_images)
    features = keras_features(encoder, images)
    init_model, step_model, state = decoder_models(decoder, features, vocab.start, log)
    found = {**decoder.describe(), "start_word": vocab.words[vocab.start], "end_word": vocab.words[vocab.end],
             "vocabulary": vocab.source, "max_length": max_length, "preprocessing": preprocessing,
             "encoder": encoder_info}
    for key, value in found.items():
        log(f"found {key}: {value}")
    specs = decoder_specs(input_shape(preprocessing), decoder.feature_shape, decoder.vocab_size, state)
    keras_models = {"encoder": encoder, "decoder_init": init_model, "decoder_step": step_model}
    rnns = "/".join(dict.fromkeys(type(layer).__name__ for layer in decoder.recurrent))
    attention = sum(type(op).__name__ == "MultiHeadAttention" for op in decoder.model.operations)
    body = (f"{len(decoder.recurrent)} {rnns} layer{'s' if len(decoder.recurrent) > 1 else ''}" if decoder.recurrent
            else f"{attention} MultiHeadAttention layer{'s' if attention != 1 else ''}, no recurrent layer")
    manifest = {
        "name": args.name or args.out.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "description": (f"Imported from a Keras notebook model ({'+'.join(decoder.architecture)} decoder, "
                        f"{body}; "
                        f"{encoder_info.get('architecture', 'own encoder')}); decoder kind: {decoder.kind}."),
        "graphs": {s.role: graph_entry(s) for s in specs},
        "vocabulary": {"file": "vocab.json", "size": len(vocab.words)},
        "special_tokens": vocab.special_tokens,
        "max_length": max_length,
        "preprocessing": preprocessing,
        "decoder": {"kind": decoder.kind},
        "decoding": {"no_repeat_ngram_size": args.no_repeat_ngram_size},
        "opset": OPSET,
        "tools": tool_versions(),
        "provenance": {"imported": {**found, "decoder_file": str(args.decoder),
                                    "vocabulary_file": str(args.vocabulary)}},
    }
    with staged_bundle(args.out) as staging:
        for spec in specs:
            started = time.time()
            try:
                onnx.save(convert(keras_models[spec.role], spec, OPSET), staging / spec.onnx_file)
            except Exception as exc:  # tf2onnx and the ONNX checker raise many types
                raise ImportFailure(f"{spec.role}: the converter cannot express it in ONNX ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:300]})") from None
            if spec.role == "encoder":   # its features are computed: VGG16's 553 MB go before ONNX's copies come
                keras_models["encoder"] = encoder = None
                release_memory()
            optimize(staging / spec.onnx_file, staging / spec.optimized_file)
            log(f"converted {spec.role} in {time.time() - started:.1f}s")
        parity = {}
        for variant, file in (("onnx", lambda s: s.onnx_file), ("optimized", lambda s: s.optimized_file)):
            sessions = None   # one variant's sessions at a time
            release_memory()
            sessions = {s.role: ort.InferenceSession(str(staging / file(s)), providers=["CPUExecutionProvider"])
                        for s in specs}
            parity[variant] = check_import_parity(features, model, decoder, sessions, manifest["graphs"], images,
                                                  names, vocab, specs[0], lambda m, v=variant: log(f"[{v}] {m}"))
        manifest["provenance"]["parity"] = parity
        (staging / "vocab.json").write_text(json.dumps({"words": vocab.words, "special_tokens": vocab.special_tokens}))
        manifest = finish(staging, manifest)
    return manifest


def _encoder_argument(typed: str) -> str:
    try:
        return encoder_name(typed)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export.from_keras",
                                     description="Import a Keras notebook captioning model into a model bundle.")
    parser.add_argument("--decoder", type=Path, required=True, help="the merge model: .h5 (Keras 2 / tf.keras) or .keras")
    parser.add_argument("--vocabulary", type=Path, required=True,
                        help="pickled Tokenizer, Tokenizer JSON (to_json()), or pickled wordtoix/ixtoword dicts")
    parser.add_argument("--encoder", type=_encoder_argument,
                        help="the keras.applications encoder the notebook used: "
                             + ", ".join(recipe.application for recipe in ENCODERS.values())
                             + " (InceptionV3, inception_v3 and inceptionv3 are the same)")
    parser.add_argument("--encoder-weights", type=Path, help="its weights, a local file (see docs/serve-your-own-model.md)")
    parser.add_argument("--encoder-model", type=Path, help="or: an encoder saved as a Keras model of its own")
    parser.add_argument("--preprocessing", choices=KERAS_MODES, help="with --encoder-model: preprocess_input's mode")
    parser.add_argument("--image-size", type=int, help="with --encoder-model: the square input size")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write, e.g. onnx_models/mine")
    parser.add_argument("--name", help="bundle name (default: the --out folder's name)")
    parser.add_argument("--start-word", help="the caption start word (default: found in the vocabulary, e.g. startseq or <start>)")
    parser.add_argument("--end-word", help="the caption end word (default: the start word's pair, e.g. endseq or <end>)")
    parser.add_argument("--padding", choices=("auto", "pre", "post"), default="auto",
                        help="where the notebook's loop puts the pads: pre (pad_sequences' default) or post (the "
                             "words first); default auto: post for a model that gives a word per position, else pre")
    parser.add_argument("--max-length", type=int, help="longest caption (default: the model's input length)")
    parser.add_argument("--images", type=Path, help="images to check parity on (default: generated scenes)")
    parser.add_argument("--parity-images", type=int, default=16, help="how many images parity checks (default 16)")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=0,
                        help="the server never repeats an n-gram of this size within a caption (default 0: no rule)")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's and tf2onnx's own logging")
    parser.add_argument("--unsafe-lambda", action="store_true",
                        help="load Lambda layers (runs code from the model file; only for files you trust)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = []
    if bool(args.encoder) == bool(args.encoder_model):
        problems.append("give --encoder NAME --encoder-weights FILE, or --encoder-model FILE")
    if args.encoder and not args.encoder_weights:
        problems.append("--encoder needs --encoder-weights (a local file; nothing is downloaded)")
    if args.encoder_model and not (args.preprocessing and args.image_size):
        problems.append("--encoder-model needs --preprocessing and --image-size")
    if args.parity_images < 1 or (args.max_length is not None and args.max_length < 1):
        problems.append("--parity-images and --max-length must be at least 1")
    if args.no_repeat_ngram_size < 0:
        problems.append("--no-repeat-ngram-size must be at least 0")
    if problems:
        print(f"error: {'; '.join(problems)}", file=sys.stderr)
        return 2
    return run_import(import_model, args)


def run_import(run, args) -> int:
    """An import tool's exit status: `run(args, log)` with TensorFlow's logging silenced unless
    --verbose; 0 written, 1 parity failed, 2 refused, each failure in one line."""
    with tensorflow_silenced(not args.verbose):
        from .keras_files import ModelFileError

        try:
            run(args, log=lambda m: print(m, file=sys.stderr))
        except (ImportFailure, ModelFileError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except ParityError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"wrote bundle {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

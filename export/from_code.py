"""Import a captioner defined by its notebook's code (subclassed layers and models, weights saved
with `save_weights` or `tf.train.Checkpoint`): the keras.io "Image captioning" Transformer, the
TensorFlow "Image captioning with visual attention" GRU, and their forks.

Usage:
  python -m export.from_code --code serving.py --trust-code --weights model.weights.h5 \\
      --vocabulary vocab.json --preprocessing raw --image-size 299 --max-length 19 --out onnx_models/mine

The code file (`--code`; it may import the notebook's own module beside it) defines functions
that the tool calls with TensorFlow tensors; their names can be changed with the options of the
same name:
  build(weights)                        -> model: the notebook's objects, weights loaded
  encode(model, images)                 -> memory [batch, ...]: preprocessed images to what the decoder reads
and either (a whole-prefix decoder, e.g. a Transformer)
  next_word(model, memory, words)       -> scores [batch, vocabulary] or [batch, length, vocabulary]
                                           for `words` [batch, max_length], padded as --padding says
or (a stepped decoder, e.g. an RNN with attention)
  initial_state(model, memory)          -> state: a tensor or a tuple of tensors
  step(model, memory, token, state)     -> (scores [batch, vocabulary], state[, attention weights])
Scores are probabilities or logits (told apart on the parity images, or --scores). The tool traces
these functions to the bundle's three graphs (encoder, decoder_init, decoder_step) and writes the
bundle only if its greedy captions equal the same functions' own greedy loop on the parity images.
Loading code runs it: --trust-code is required, as Hugging Face's trust_remote_code is.
Exit status: 0 written, 1 parity failed, 2 a file, function or argument the tool cannot use.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bundle.format import finish, staged_bundle
from bundle.preprocess import KERAS_MODES, RESAMPLE, input_shape, keras_preprocessing
from bundle.specs import StateSpec, decoder_specs

from .from_keras import ImportFailure, check_import_parity, parity_images, run_import
from .notebook_vocabulary import VocabularyError, read_vocabulary
from .writer import graph_entry

FUNCTIONS = ("build", "encode", "next_word", "initial_state", "step")


@dataclass
class CodeModel:
    """The user's functions, bound to the model `build` returned."""

    model: object
    functions: dict          # name in FUNCTIONS -> the user's callable
    kind: str                # "step" or "whole_prefix"
    padding: str             # whole prefix: "pre" or "post"
    max_length: int
    scores: str = "probabilities"

    def encode(self, images):
        return self.functions["encode"](self.model, images)

    def initial_state(self, memory) -> list:
        state = self.functions["initial_state"](self.model, memory)
        return list(state) if isinstance(state, (tuple, list)) else [state]

    def step(self, memory, token, state: list):
        """(scores [batch, V], new state, attention [batch, positions] or None)."""
        out = self.functions["step"](self.model, memory, token, state[0] if len(state) == 1 else tuple(state))
        if not isinstance(out, (tuple, list)) or len(out) not in (2, 3):
            raise ImportFailure("step must return (scores, state) or (scores, state, attention)")
        scores, new = out[0], out[1]
        new = list(new) if isinstance(new, (tuple, list)) else [new]
        attention = None
        if len(out) == 3:
            import tensorflow as tf

            attention = tf.reshape(out[2], (tf.shape(out[2])[0], -1))
        return scores, new, attention

    def next_word(self, memory, words):
        """Scores of the next word after the padded `words` [batch, max_length], read at the newest
        word's position for a model that gives a word per position."""
        import tensorflow as tf

        out = self.functions["next_word"](self.model, memory, words)
        if len(out.shape) == 3:
            count = tf.reduce_sum(tf.cast(tf.not_equal(words, 0), tf.int32), axis=1)
            position = count - 1 if self.padding == "post" else tf.fill(tf.shape(count), self.max_length - 1)
            out = tf.gather(out, tf.maximum(position, 0), axis=1, batch_dims=1)
        return out

    def log_probs(self, scores):
        import tensorflow as tf

        from .notebook_decoder import padding_penalty

        scores = tf.cast(scores, tf.float32)
        log_probs = tf.nn.log_softmax(scores, -1) if self.scores == "logits" else tf.math.log(tf.maximum(scores, 1e-30))
        return log_probs + padding_penalty(int(scores.shape[-1]))


def load_code(path: Path, names: dict) -> dict:
    """The user's functions from the file `path` (its folder importable, so it can import the
    notebook's module beside it); ImportFailure naming what is missing."""
    if not path.is_file():
        raise ImportFailure(f"--code {path}: no such file")
    sys.path.insert(0, str(path.resolve().parent))
    spec = importlib.util.spec_from_file_location(f"caption_code_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code raises whatever it raises
        raise ImportFailure(f"--code {path} failed to run ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from None
    found = {role: getattr(module, name) for role, name in names.items() if callable(getattr(module, name, None))}
    missing = [names[r] for r in ("build", "encode") if r not in found]
    stepped = "step" in found and "initial_state" in found
    if not stepped and "next_word" not in found:
        missing.append(f"{names['next_word']} (or {names['initial_state']} and {names['step']})")
    if missing:
        raise ImportFailure(f"--code {path} defines no {', '.join(missing)}; see python -m export.from_code --help")
    return found


def check_weights_loaded(functions: dict, weights: Path, images: np.ndarray, memory: np.ndarray, build: str) -> None:
    """A second build must encode as the first did: weights that were not loaded (a checkpoint restored
    before Keras made the variables, with expect_partial() hiding it) are fresh random ones each time."""
    import gc

    again = functions["build"](str(weights))
    second = np.asarray(functions["encode"](again, images))
    del again
    gc.collect()
    if second.shape != memory.shape or not np.allclose(second, memory, rtol=1e-4, atol=1e-5):
        raise ImportFailure(f"{build}() gives another model each time it runs (two builds encode the same images "
                            f"differently by up to {float(np.abs(second - memory).max()):.3g}): were the weights loaded? "
                            "A tf.train.Checkpoint restores only variables that exist, and Keras makes them on a "
                            "layer's first call: call the models once before restoring, and use "
                            "assert_existing_objects_matched() rather than expect_partial()")


def code_greedy(code: CodeModel, memory, count: int, start: int, end: int) -> tuple[list[list[int]], list[list[np.ndarray]]]:
    """The functions' own greedy loop in TensorFlow, as the tutorials write it: the start word, then
    the most likely word until the end word or max_length words. Returns word ids (without start
    and end) and each step's probabilities."""
    import tensorflow as tf

    captions, probabilities = [[] for _ in range(count)], [[] for _ in range(count)]
    done = np.zeros(count, bool)
    tokens = np.full((count, 1), start, np.int32)
    state = code.initial_state(memory) if code.kind == "step" else None
    words = np.zeros((count, code.max_length), np.int32)
    for position in range(code.max_length):
        if code.kind == "step":
            scores, state, _ = code.step(memory, tf.constant(tokens), state)
        else:
            if code.padding == "post":
                words[:, position] = tokens[:, 0]
            else:
                words = np.concatenate([words[:, 1:], tokens], axis=1)
            scores = code.next_word(memory, tf.constant(words))
        probs = np.exp(np.asarray(code.log_probs(scores)))
        for row in np.flatnonzero(~done):
            word = int(np.asarray(scores)[row, 1:].argmax()) + 1
            probabilities[row].append(probs[row])
            if word == end:
                done[row] = True
            else:
                captions[row].append(word)
            tokens[row, 0] = word
        if done.all():
            break
    return captions, probabilities


def infer_scores(code: CodeModel, memory, start: int) -> tuple[str, int]:
    """("probabilities" or "logits", vocabulary size) from the scores after the word `start`."""
    import tensorflow as tf

    rows = int(memory.shape[0])
    tokens = tf.constant(np.full((rows, 1), start, np.int32))
    if code.kind == "step":
        scores = np.asarray(code.step(memory, tokens, code.initial_state(memory))[0])
    else:
        words = np.zeros((rows, code.max_length), np.int32)
        words[:, 0 if code.padding == "post" else -1] = start
        scores = np.asarray(code.next_word(memory, tf.constant(words)))
    if scores.ndim != 2:
        raise ImportFailure(f"the scores have shape {scores.shape}; expected (batch, vocabulary)")
    probabilities = bool(scores.min() >= 0 and np.allclose(scores.sum(-1), 1, atol=1e-3))
    return ("probabilities" if probabilities else "logits"), scores.shape[1]


def graph_functions(code: CodeModel, attention: bool):
    """The three graphs as TensorFlow functions of the spec's inputs, in order."""
    import tensorflow as tf

    def encoder(image):
        return tf.identity(code.encode(image))

    if code.kind == "step":
        def decoder_init(memory):
            return (*[tf.identity(s) for s in code.initial_state(memory)], tf.identity(memory))

        def decoder_step(token, *state_and_memory):
            *state, memory = state_and_memory
            scores, new, weights = code.step(memory, token, list(state))
            outputs = [code.log_probs(scores), *new]
            return (*outputs, weights) if attention else tuple(outputs)
        return encoder, decoder_init, decoder_step

    def decoder_init(memory):
        return tf.zeros((tf.shape(memory)[0], code.max_length), tf.int32), tf.identity(memory)

    def decoder_step(token, prefix, memory):
        from .notebook_decoder import next_prefix

        prefix_next, _ = next_prefix(prefix, token, code.padding)   # next_word reads the position itself
        return code.log_probs(code.next_word(memory, prefix_next)), prefix_next
    return encoder, decoder_init, decoder_step


def import_code_model(args, log=print) -> dict:
    """Load, trace, convert, check and write; returns the manifest."""
    import onnx
    import onnxruntime as ort
    import tensorflow as tf

    from .convert import OPSET, convert_function, optimize
    from .writer import tool_versions

    names = {role: getattr(args, role) for role in FUNCTIONS}
    functions = load_code(args.code, names)
    try:
        model = functions["build"](str(args.weights))
    except Exception as exc:  # the user's code raises whatever it raises
        raise ImportFailure(f"{names['build']}({str(args.weights)!r}) failed ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from None
    kind = "step" if "step" in functions and "initial_state" in functions else "whole_prefix"
    padding = "post" if args.padding == "auto" else args.padding
    code = CodeModel(model, functions, kind, padding, args.max_length)
    preprocessing = keras_preprocessing(args.preprocessing, args.image_size, args.resample)
    images, image_names = parity_images(args.images, preprocessing, args.parity_images)
    memory = tf.constant(np.asarray(code.encode(tf.constant(images))))
    check_weights_loaded(functions, args.weights, images[:2], np.asarray(memory[:2]), names["build"])
    try:
        inferred, vocab_size = infer_scores(code, memory, 1)   # any word gives the scores' shape
        vocab = read_vocabulary(args.vocabulary, vocab_size, args.start_word, args.end_word)
    except VocabularyError as exc:
        raise ImportFailure(f"{args.vocabulary}: {exc}") from None
    code.scores = args.scores if args.scores != "auto" else inferred
    state = code.initial_state(memory) if kind == "step" else []
    attention_positions = 0
    if kind == "step":
        weights = code.step(memory, tf.constant(np.full((len(images), 1), vocab.start, np.int32)), state)[2]
        attention_positions = int(weights.shape[1]) if weights is not None else 0
        states = [StateSpec(f"s{i}" if len(state) > 1 else "h", "float32", tuple(int(d) for d in s.shape[1:]), True)
                  for i, s in enumerate(state)]
    else:
        states = [StateSpec("prefix", "int32", (args.max_length,), True)]
    memory_shape = tuple(int(d) for d in memory.shape[1:])
    states.append(StateSpec("memory", "float32", memory_shape, False))
    specs = decoder_specs(input_shape(preprocessing), memory_shape, vocab_size, states, attention_positions)
    found = {"decoder_kind": kind, "functions": {r: n for r, n in names.items() if r in functions},
             "scores": code.scores, "memory_shape": list(memory_shape), "attention_positions": attention_positions,
             **({"padding": padding} if kind == "whole_prefix" else {}),
             "start_word": vocab.words[vocab.start], "end_word": vocab.words[vocab.end], "vocabulary": vocab.source,
             "vocab_size": vocab_size, "max_length": args.max_length, "preprocessing": preprocessing}
    for key, value in found.items():
        log(f"found {key}: {value}")
    reference = code_greedy(code, memory, len(images), vocab.start, vocab.end)
    manifest = {
        "name": args.name or args.out.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "description": (f"Imported from its notebook's code ({args.code.name}); decoder kind: {kind}"
                        f"{', with attention' if attention_positions else ''}."),
        "graphs": {s.role: graph_entry(s) for s in specs},
        "vocabulary": {"file": "vocab.json", "size": len(vocab.words)},
        "special_tokens": vocab.special_tokens,
        "max_length": args.max_length,
        "preprocessing": preprocessing,
        "decoder": {"kind": kind},
        "decoding": {"no_repeat_ngram_size": 0},
        "opset": OPSET,
        "tools": tool_versions(),
        "provenance": {"imported": {**found, "code_file": str(args.code), "weights_file": str(args.weights),
                                    "vocabulary_file": str(args.vocabulary)}},
    }
    with staged_bundle(args.out) as staging:
        for spec, function in zip(specs, graph_functions(code, bool(attention_positions))):
            started = time.time()
            try:
                onnx.save(convert_function(function, spec, OPSET), staging / spec.onnx_file)
            except Exception as exc:  # tf2onnx and the ONNX checker raise many types
                raise ImportFailure(f"{spec.role}: the converter cannot express it in ONNX ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from None
            optimize(staging / spec.onnx_file, staging / spec.optimized_file)
            log(f"converted {spec.role} in {time.time() - started:.1f}s")
        parity = {}
        for variant, file in (("onnx", lambda s: s.onnx_file), ("optimized", lambda s: s.optimized_file)):
            sessions = {s.role: ort.InferenceSession(str(staging / file(s)), providers=["CPUExecutionProvider"])
                        for s in specs}
            parity[variant] = check_import_parity(np.asarray(memory), None, None, sessions, manifest["graphs"], images,
                                                  image_names, vocab, specs[0], lambda m, v=variant: log(f"[{v}] {m}"),
                                                  reference=reference, max_length=args.max_length)
        manifest["provenance"]["parity"] = parity
        (staging / "vocab.json").write_text(json.dumps({"words": vocab.words, "special_tokens": vocab.special_tokens}))
        manifest = finish(staging, manifest)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export.from_code",
                                     description="Import a captioner defined by its notebook's code into a model bundle.")
    parser.add_argument("--code", type=Path, required=True, help="the Python file that defines the functions below")
    parser.add_argument("--trust-code", action="store_true", required=True,
                        help="run the code file (required: it runs with your permissions)")
    parser.add_argument("--weights", type=Path, required=True,
                        help="what build() loads: a save_weights file, a tf.train.Checkpoint prefix, ...")
    parser.add_argument("--vocabulary", type=Path, required=True,
                        help="the vocabulary (a get_vocabulary() list as JSON or pickle, a word a line, a Tokenizer ...)")
    parser.add_argument("--preprocessing", choices=KERAS_MODES, required=True,
                        help="the images' preprocess_input mode: tf (InceptionV3), raw (EfficientNet), caffe, torch")
    parser.add_argument("--image-size", type=int, required=True, help="the square size the images are resized to")
    parser.add_argument("--resample", choices=tuple(RESAMPLE), default="nearest",
                        help="Pillow's resize filter for uploads (default nearest, as keras.utils.load_img; the "
                             "tutorials' tf.image.resize is bilinear without antialiasing, which none matches exactly)")
    parser.add_argument("--max-length", type=int, required=True,
                        help="the loop's most words; for next_word, also the length of the padded words it takes")
    parser.add_argument("--padding", choices=("auto", "pre", "post"), default="auto",
                        help="next_word's padding (default auto: post, the words first, as the tutorials feed them)")
    parser.add_argument("--scores", choices=("auto", "probabilities", "logits"), default="auto",
                        help="what the functions' scores are (default: told apart on the parity images)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write, e.g. onnx_models/mine")
    parser.add_argument("--name", help="bundle name (default: the --out folder's name)")
    parser.add_argument("--start-word", help="default: found in the vocabulary (<start>, startseq, ...)")
    parser.add_argument("--end-word", help="default: the start word's pair (<end>, endseq, ...)")
    parser.add_argument("--images", type=Path, help="images to check parity on (default: generated scenes)")
    parser.add_argument("--parity-images", type=int, default=16, help="how many images parity checks (default 16)")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's and tf2onnx's own logging")
    for role in FUNCTIONS:
        parser.add_argument(f"--{role.replace('_', '-')}", dest=role, default=role, metavar="NAME",
                            help=f"the code file's name for {role} (default {role})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_length < 1 or args.parity_images < 1 or args.image_size < 1:
        print("error: --max-length, --parity-images and --image-size must be at least 1", file=sys.stderr)
        return 2
    return run_import(import_code_model, args)


if __name__ == "__main__":
    sys.exit(main())

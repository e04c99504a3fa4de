"""Small versions of the classic notebook captioners, as their authors write them, trained briefly
on synthetic scenes so their captions depend on the image: `python -m training.notebook_zoo OUT`.

Each decoder takes (image features, pre-padded word ids) and gives the next word's softmax; they
differ in where the image goes (Tanti, Gatt and Camilleri 2018: init-inject, pre-inject, par-inject,
merge), in their RNNs (LSTM, GRU, SimpleRNN; one or two stacked), in the per-example layers they put
in each branch and in the head, in masking, and in how they are saved: tf.keras (Keras 2) .h5,
Keras 3 .h5 (whose masks are saved as NotEqual operations) and .keras. The vocabularies come in the
notebooks' formats too. OUT/<name>/ holds model file and vocabulary; OUT/encoder.keras, a small
random CNN over 64 px images ("tf" mode) that all of them read; OUT/images/, held-out scenes none
was trained on; OUT/zoo.json, what each is. With --inception, only a stepped and a whole-prefix
merge model (INCEPTION_MODELS), over a seeded-random InceptionV3 whose weights file
export.from_keras reads with --encoder inception_v3 (for benchmarks.notebook).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from bundle.preprocess import keras_preprocessing, load_image  # noqa: E402
from training.synthetic import make_scene  # noqa: E402

IMAGE_SIZE = 64
MAX_LENGTH = 12
SCENES, HELD_OUT = 160, 12
UNITS = 40


@dataclass(frozen=True)
class Notebook:
    """One zoo model: how it is built, saved and what the importer should make of it."""

    name: str
    architecture: str     # init-inject, pre-inject, par-inject, merge
    framework: str        # "tf_keras" (Keras 2) or "keras" (Keras 3)
    model_file: str       # model.h5 or model.keras
    vocabulary: str       # "wordtoix" (pickled dicts), "tokenizer_json", "tokenizer_pickle", "wordtoix_json"
    kind: str             # the decoding the importer should choose: step or whole_prefix
    options: tuple = ()   # builder switches: gru, simple, stacked, concat, unmasked, explicit_mask,
                          # normalization, batchnorm, layernorm; transformer, cross_attention;
                          # sequence (post-padded words, a next word per position)

    @property
    def start_end(self) -> tuple[str, str]:
        """The caption's start and end words as this notebook's vocabulary spells them."""
        return ("<start>", "<end>") if self.vocabulary == "word_list_json" else ("startseq", "endseq")


ZOO = (
    Notebook("merge_lstm_h5", "merge", "tf_keras", "model.h5", "wordtoix", "step"),
    Notebook("merge_lstm_k3h5", "merge", "keras", "model.h5", "tokenizer_json", "step", ("normalization",)),
    Notebook("merge_gru_concat", "merge", "keras", "model.keras", "tokenizer_json", "step",
             ("gru", "concat", "batchnorm", "layernorm")),
    Notebook("merge_gru_unmasked", "merge", "keras", "model.keras", "tokenizer_pickle", "whole_prefix",
             ("gru", "concat", "unmasked")),
    # Keras 3 gives an RNN called with initial_state no mask unless it is passed: with it, stepped;
    # without it the RNN reads the padding, in the notebook's loop as well, so whole-prefix.
    Notebook("init_lstm", "init-inject", "keras", "model.keras", "wordtoix_json", "step",
             ("normalization", "explicit_mask")),
    Notebook("init_lstm_k3_mask_dropped", "init-inject", "keras", "model.keras", "tokenizer_json", "whole_prefix"),
    Notebook("init_gru_h5", "init-inject", "tf_keras", "model.h5", "tokenizer_pickle", "step", ("gru", "stacked")),
    Notebook("pre_lstm_k3h5", "pre-inject", "keras", "model.h5", "wordtoix", "step", ("layernorm",)),
    # tf.keras cannot concatenate a masked sequence on the time axis (its Concatenate's mask fails),
    # so its pre-inject models are unmasked.
    Notebook("pre_gru_unmasked_h5", "pre-inject", "tf_keras", "model.h5", "tokenizer_json", "whole_prefix",
             ("gru", "unmasked")),
    # Keras 3's Concatenate keeps a position if any input does, so the RepeatVector drops the mask:
    # passed to the RNN explicitly here.
    Notebook("par_gru", "par-inject", "keras", "model.keras", "tokenizer_json", "step",
             ("gru", "batchnorm", "explicit_mask")),
    Notebook("par_lstm_unmasked", "par-inject", "keras", "model.keras", "wordtoix", "whole_prefix", ("unmasked",)),
    Notebook("stacked_lstm_merge", "merge", "keras", "model.keras", "tokenizer_json", "step",
             ("stacked", "normalization", "layernorm")),
    Notebook("stacked_rnn_par_h5", "par-inject", "tf_keras", "model.h5", "wordtoix", "step", ("simple", "stacked")),
    # Today's notebooks: Transformer decoders (no recurrent layer), a word per position read at the
    # newest word's position of post-padded words, and TextVectorization's vocabulary as a JSON list.
    # The image as the first token is Tanti et al.'s pre-inject; words attending to it, par-inject.
    Notebook("transformer_image_token", "pre-inject", "keras", "model.keras", "word_list_json",
             "whole_prefix", ("transformer",)),
    Notebook("transformer_cross", "par-inject", "keras", "model.keras", "tokenizer_json",
             "whole_prefix", ("transformer", "cross_attention", "merged_head")),
    Notebook("sequence_lstm_post", "init-inject", "keras", "model.keras", "wordtoix", "whole_prefix",
             ("sequence",)),
    Notebook("merge_lstm_word_list", "merge", "keras", "model.keras", "word_list_json", "step"),
)


# With --inception: one model per decoding kind, and a Transformer, for benchmarks.notebook.
INCEPTION_MODELS = ("merge_lstm_h5", "merge_gru_unmasked", "transformer_cross")


FILE_FORMATS = {("tf_keras", "model.h5"): "tf.keras (Keras 2) `.h5`", ("keras", "model.h5"): "Keras 3 `.h5`",
                ("keras", "model.keras"): "Keras 3 `.keras`"}
VOCABULARY_FORMATS = {"wordtoix": "pickled `wordtoix`/`ixtoword` dicts", "wordtoix_json": "`wordtoix` as JSON",
                      "tokenizer_json": "`Tokenizer.to_json()`", "tokenizer_pickle": "pickled `Tokenizer`",
                      "word_list_json": "`TextVectorization.get_vocabulary()` as JSON (`<start>`/`<end>`)"}
OPTION_WORDS = {"gru": "GRU", "simple": "SimpleRNN", "stacked": "two stacked RNNs", "concat": "concatenate merge",
                "unmasked": "no mask", "explicit_mask": "mask passed to the RNN", "normalization": "Normalization",
                "batchnorm": "BatchNormalization", "layernorm": "LayerNormalization",
                "transformer": "Transformer: causal MultiHeadAttention, no RNN",
                "cross_attention": "words attend to the image", "merged_head": "the image merged into the head",
                "sequence": "post-padded words, a softmax per position (`TimeDistributed`)"}


def markdown_table() -> str:
    """The zoo as the table docs/serve-your-own-model.md shows (a test keeps the two equal)."""
    rows = ["| model | where the image goes | what else | file | vocabulary | served as |",
            "| --- | --- | --- | --- | --- | --- |"]
    for spec in ZOO:
        rnn = "" if {"gru", "simple", "transformer"} & set(spec.options) else "LSTM, "
        rest = rnn + ", ".join(OPTION_WORDS[o] for o in spec.options)
        served = "stepped" if spec.kind == "step" else "whole prefix"
        rows.append(f"| `{spec.name}` | {spec.architecture} | {rest.rstrip(', ')} | "
                    f"{FILE_FORMATS[spec.framework, spec.model_file]} | {VOCABULARY_FORMATS[spec.vocabulary]} | {served} |")
    return "\n".join(rows) + "\n"


def scenes(out: Path, count: int, seed: int, folder: str) -> tuple[list[Path], list[str]]:
    rng = np.random.default_rng(seed)
    (out / folder).mkdir(parents=True, exist_ok=True)
    paths, captions = [], []
    for i in range(count):
        image, _, texts = make_scene(rng)
        path = out / folder / f"scene{i:03d}.jpg"
        image.save(path, quality=92)
        paths.append(path)
        captions.append(texts[0])
    return paths, captions


def build_encoder(out: Path, images: np.ndarray) -> np.ndarray:
    """A random CNN whose features are standardised on `images` (so a decoder learns from them)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    image = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = layers.Conv2D(16, 5, strides=2, activation="relu")(image)
    x = layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    raw = np.asarray(keras.Model(image, x).predict(images, verbose=0))
    x = layers.Normalization(mean=raw.mean(0), variance=raw.var(0) + 1e-6)(x)
    encoder = keras.Model(image, x)
    encoder.save(out / "encoder.keras")
    return np.asarray(encoder.predict(images, verbose=0))


def build_inception(out: Path, images: np.ndarray) -> np.ndarray:
    """A seeded-random InceptionV3, pooled as the notebooks cut it; its weights go to a local file.
    (Random features tell scenes apart poorly; the benchmark needs captions of a realistic length,
    not good ones.)"""
    import keras

    keras.utils.set_random_seed(0)
    encoder = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg",
                                             input_shape=(299, 299, 3))
    encoder.save_weights(out / "inception_v3.weights.h5")
    return np.concatenate([np.asarray(encoder(images[i:i + 16], training=False)) for i in range(0, len(images), 16)])


def training_pairs(features: np.ndarray, sequences: list[list[int]]):
    """(features, pre-padded prefix, next word) for every prefix of every caption, as the notebooks train."""
    x_image, x_words, y = [], [], []
    for row, sequence in zip(features, sequences):
        for i in range(1, len(sequence)):
            prefix = sequence[:i][-MAX_LENGTH:]
            x_image.append(row)
            x_words.append([0] * (MAX_LENGTH - len(prefix)) + prefix)
            y.append(sequence[i])
    return np.array(x_image, np.float32), np.array(x_words, np.float32), np.array(y)


def sequence_pairs(features: np.ndarray, sequences: list[list[int]]):
    """(features, post-padded words, the next word at each position), as a next-word-per-position
    notebook trains (the targets' padding weighs nothing)."""
    x_words = np.zeros((len(sequences), MAX_LENGTH), np.float32)
    y = np.zeros((len(sequences), MAX_LENGTH), np.int64)
    for row, sequence in enumerate(sequences):
        words = sequence[:MAX_LENGTH + 1]
        x_words[row, :len(words) - 1] = words[:-1]
        y[row, :len(words) - 1] = words[1:]
    return features.astype(np.float32), x_words, y, (y > 0).astype(np.float32)


def transformer_decoder(spec: Notebook, keras, feature_dim: int, vocab_size: int):
    """A small functional Transformer decoder as today's notebooks write one: causal self-attention
    over the words, with the image either as the first token (then the newest position is cut out
    with Cropping1D) or attended to by the words (cross-attention), its head merged with the image."""
    layers = keras.layers
    width = 32
    image = layers.Input(shape=(feature_dim,))
    words = layers.Input(shape=(MAX_LENGTH,))
    embedded = layers.Embedding(vocab_size, width)(words)
    picture = layers.Dense(width, activation="relu")(image)
    if "cross_attention" in spec.options:
        attended = layers.MultiHeadAttention(num_heads=2, key_dim=16)(embedded, embedded, use_causal_mask=True)
        x = layers.LayerNormalization()(layers.add([embedded, attended]))
        memory = layers.Reshape((1, width))(picture)
        x = layers.LayerNormalization()(layers.add([x, layers.MultiHeadAttention(num_heads=2, key_dim=16)(x, memory)]))
        newest = layers.Flatten()(layers.Cropping1D((MAX_LENGTH - 1, 0))(x))
        head = layers.concatenate([newest, picture])
    else:
        x = layers.concatenate([layers.Reshape((1, width))(picture), embedded], axis=1)
        attended = layers.MultiHeadAttention(num_heads=2, key_dim=16)(x, x, use_causal_mask=True)
        x = layers.LayerNormalization()(layers.add([x, attended]))
        x = layers.LayerNormalization()(layers.add([x, layers.Dense(width)(layers.Dense(64, activation="relu")(x))]))
        head = layers.Flatten()(layers.Cropping1D((MAX_LENGTH, 0))(x))
    outputs = layers.Dense(vocab_size, activation="softmax")(layers.Dense(UNITS, activation="relu")(head))
    return keras.Model(inputs=[image, words], outputs=outputs)


def sequence_decoder(keras, feature_dim: int, vocab_size: int):
    """Post-padded words through an LSTM that returns every position, a softmax per position
    (`TimeDistributed`), the image as the LSTM's initial state: the loop reads `preds[0, t]`."""
    layers = keras.layers
    image = layers.Input(shape=(feature_dim,))
    words = layers.Input(shape=(MAX_LENGTH,))
    embedded = layers.Embedding(vocab_size, 24, mask_zero=True)(words)
    initial = [layers.Dense(UNITS, activation="tanh")(image) for _ in range(2)]
    x = layers.LSTM(UNITS, return_sequences=True)(embedded, initial_state=initial)
    outputs = layers.TimeDistributed(layers.Dense(vocab_size, activation="softmax"))(x)
    return keras.Model(inputs=[image, words], outputs=outputs)


def decoder(spec: Notebook, keras, feature_dim: int, vocab_size: int, features: np.ndarray):
    """The notebook's decoder, written with `keras` (Keras 3 or tf_keras) as its author would."""
    if "transformer" in spec.options:
        return transformer_decoder(spec, keras, feature_dim, vocab_size)
    if "sequence" in spec.options:
        return sequence_decoder(keras, feature_dim, vocab_size)
    layers = keras.layers
    opts = set(spec.options)
    rnn = layers.SimpleRNN if "simple" in opts else layers.GRU if "gru" in opts else layers.LSTM
    states = 2 if rnn is layers.LSTM else 1
    image = layers.Input(shape=(feature_dim,))
    words = layers.Input(shape=(MAX_LENGTH,))
    x = image
    if "normalization" in opts:
        x = layers.Normalization(mean=features.mean(0), variance=features.var(0) + 1e-3)(x)
    x = layers.Dropout(0.2)(x)
    if "batchnorm" in opts:
        x = layers.BatchNormalization()(x)
    embedded = layers.Embedding(vocab_size, 24, mask_zero="unmasked" not in opts)(words)
    embedded = layers.Dropout(0.2)(embedded)
    initial = None
    if spec.architecture == "init-inject":
        initial = [layers.Dense(UNITS, activation="tanh")(x) for _ in range(states)]
    elif spec.architecture == "pre-inject":
        first = layers.Reshape((1, 24))(layers.Dense(24, activation="relu")(x))
        embedded = layers.concatenate([first, embedded], axis=1)
    elif spec.architecture == "par-inject":
        repeated = layers.RepeatVector(MAX_LENGTH)(layers.Dense(16, activation="relu")(x))
        embedded = layers.concatenate([repeated, embedded])
    # As notebooks write it: initial_state only where the image goes there.
    with_state = {} if initial is None else {"initial_state": initial}
    if "stacked" in opts:
        embedded = rnn(UNITS, return_sequences=True)(embedded, **with_state)
        if "layernorm" in opts:
            embedded = layers.LayerNormalization()(embedded)
        with_state = {}
    if "explicit_mask" in opts:
        with_state["mask"] = keras.ops.not_equal(words, 0)
    text = rnn(UNITS)(embedded, **with_state)
    if spec.architecture == "merge":
        picture = layers.Dense(UNITS, activation="relu")(x)
        merge = layers.concatenate if "concat" in opts else layers.add
        text = merge([text, picture] if "concat" in opts else [picture, text])
    if "layernorm" in opts and "stacked" not in opts:
        text = layers.LayerNormalization()(text)
    head = layers.Dense(UNITS, activation="relu")(text)
    if "batchnorm" in opts:
        head = layers.BatchNormalization()(head)
    if spec.architecture == "merge" and "concat" not in opts:
        outputs = layers.Dense(vocab_size, activation="softmax")(head)
    else:  # the softmax as a layer of its own, as some notebooks write it
        outputs = layers.Activation("softmax")(layers.Dense(vocab_size)(head))
    return keras.Model(inputs=[image, words], outputs=outputs)


def vocabulary(spec: Notebook, texts: list[str]) -> tuple[dict, object]:
    """(wordtoix, the object the notebook saves) in the zoo entry's vocabulary format."""
    from keras_preprocessing.text import Tokenizer

    if spec.vocabulary == "word_list_json":   # TextVectorization's: padding, [UNK], then by frequency
        counts: dict[str, int] = {}
        for word in (w for t in texts for w in t.split()):
            counts[word] = counts.get(word, 0) + 1
        words = ["", "[UNK]"] + sorted(counts, key=lambda w: (-counts[w], w))
        return {w: i for i, w in enumerate(words) if i > 1}, words
    if spec.vocabulary.startswith("tokenizer"):
        tokenizer = Tokenizer(oov_token="<unk>")
        tokenizer.fit_on_texts(texts)
        return tokenizer.word_index, tokenizer
    words = sorted({w for t in texts for w in t.split()})
    wordtoix = {w: i + 1 for i, w in enumerate(words)}
    return wordtoix, (wordtoix, {i: w for w, i in wordtoix.items()})


def save_vocabulary(spec: Notebook, folder: Path, saved) -> str:
    if spec.vocabulary == "tokenizer_json":
        (folder / "tokenizer.json").write_text(saved.to_json())
        return "tokenizer.json"
    if spec.vocabulary == "word_list_json":
        (folder / "vocabulary.json").write_text(json.dumps(saved))
        return "vocabulary.json"
    if spec.vocabulary == "wordtoix_json":
        (folder / "wordtoix.json").write_text(json.dumps(saved[0]))
        return "wordtoix.json"
    name = "tokenizer.pkl" if spec.vocabulary == "tokenizer_pickle" else "vocab.pkl"
    (folder / name).write_bytes(pickle.dumps(saved))
    return name


def train(spec: Notebook, out: Path, features: np.ndarray, texts: list[str], seed: int) -> dict:
    """Build, train briefly and save one zoo model; returns its entry for zoo.json."""
    if spec.framework == "tf_keras":
        import tf_keras as keras
    else:
        import keras
    start, end = spec.start_end
    texts = [f"{start} {t} {end}" for t in texts]
    wordtoix, saved = vocabulary(spec, texts)
    sequences = [[wordtoix[w] for w in t.split()] for t in texts]
    # Layer names count up within a process: each model starts from none, whichever models its process
    # trained before (tf.keras can otherwise save two layers of one name, which no Keras loads back).
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = decoder(spec, keras, features.shape[1], max(wordtoix.values()) + 1, features)
    if "sequence" in spec.options:
        model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        x_image, x_words, y, weights = sequence_pairs(features, sequences)
        model.fit([x_image, x_words], y, sample_weight=weights, epochs=60, batch_size=16, verbose=0)
    else:
        model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        x_image, x_words, y = training_pairs(features, sequences)
        model.fit([x_image, x_words], y, epochs=12, batch_size=64, verbose=0)
    folder = out / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / spec.model_file)
    return {"decoder": f"{spec.name}/{spec.model_file}",
            "vocabulary": f"{spec.name}/{save_vocabulary(spec, folder, saved)}",
            "vocabulary_format": spec.vocabulary, "architecture": spec.architecture, "framework": spec.framework,
            "kind": spec.kind,
            "options": list(spec.options)}


def main(out: Path, names: list[str] | None = None, inception: bool = False) -> None:
    """Write the zoo (or the models in `names`) to `out`; with `inception`, only INCEPTION_MODELS over a
    random InceptionV3."""
    out.mkdir(parents=True, exist_ok=True)
    train_paths, texts = scenes(out, SCENES, 11, "train")
    scenes(out, HELD_OUT, 12, "images")
    if inception:
        names = list(INCEPTION_MODELS)
        features = build_inception(out, np.stack([load_image(p, keras_preprocessing("tf", 299)) for p in train_paths]))
    else:
        features = build_encoder(out, np.stack([load_image(p, keras_preprocessing("tf", IMAGE_SIZE))
                                                for p in train_paths]))
    chosen = [spec for spec in ZOO if names is None or spec.name in names]
    seeds = [zlib.crc32(spec.name.encode()) % 1000 for spec in chosen]
    # Training a model this small keeps one core busy with Keras' Python, so one process per core trains
    # the zoo in about half the time (spawned: TensorFlow does not survive fork); each model has its seed.
    with ProcessPoolExecutor(min(len(chosen), os.cpu_count() or 1), mp_context=get_context("spawn")) as pool:
        trained = pool.map(train, chosen, [out] * len(chosen), [features] * len(chosen), [texts] * len(chosen), seeds)
        entries = {spec.name: entry for spec, entry in zip(chosen, trained)}
    (out / "zoo.json").write_text(json.dumps({"max_length": MAX_LENGTH, "image_size": IMAGE_SIZE,
                                              "inception": inception, "models": entries}, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", nargs="+", choices=[spec.name for spec in ZOO], help="build only these")
    parser.add_argument("--inception", action="store_true", help="a random InceptionV3 encoder (for the benchmark)")
    arguments = parser.parse_args()
    main(arguments.out, arguments.only, arguments.inception)

"""Small versions of the classic notebook captioners, trained for a few epochs on synthetic scenes
so their captions depend on the image: `python -m benchmarks.notebook_models OUT [--inception]`.
The tests import them (tests/export/test_from_keras.py); benchmarks.notebook times one.

- lstm_h5/: tf.keras (Keras 2) merge LSTM, mask_zero=True over a frozen embedding matrix (as with
  GloVe), saved as legacy .h5, vocabulary as pickled (wordtoix, ixtoword) dicts.
- gru_keras/: Keras 3 merge GRU with concatenate and masking, saved as .keras, Tokenizer JSON.
- gru_unmasked/: Keras 3 merge GRU without masking (its state depends on the padding), .keras,
  a pickled Keras 2 Tokenizer (keras_preprocessing).
- encoder.keras: the encoder all three use, a small random CNN over 64 px images ("tf" mode);
  with --inception, inception_v3.weights.h5 instead: a seeded-random InceptionV3 (the notebooks'
  encoder, 299 px, pooled), whose weights file export.from_keras reads with --encoder inception_v3.
- images/: held-out scenes none of them trained on.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from bundle.preprocess import keras_preprocessing, load_image  # noqa: E402
from training.synthetic import make_scene  # noqa: E402

IMAGE_SIZE = 64
MAX_LENGTH = 12
SCENES, HELD_OUT = 160, 12


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


def build_encoder(out: Path, images: np.ndarray):
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


def build_inception(out: Path, images: np.ndarray):
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


def lstm_h5(out: Path, features, texts):
    """The Flickr8k notebook's model in tf.keras, with wordtoix/ixtoword dicts."""
    import tf_keras
    from tf_keras import layers

    words = sorted({w for t in texts for w in t.split()})
    wordtoix = {w: i + 1 for i, w in enumerate(words)}
    ixtoword = {i: w for w, i in wordtoix.items()}
    vocab_size = len(wordtoix) + 1
    sequences = [[wordtoix[w] for w in t.split()] for t in texts]
    tf_keras.utils.set_random_seed(1)
    glove = np.random.default_rng(1).normal(size=(vocab_size, 20)).astype(np.float32)
    inputs1 = layers.Input(shape=(features.shape[1],))
    fe1 = layers.Dropout(0.2)(inputs1)
    fe2 = layers.Dense(48, activation="relu")(fe1)
    inputs2 = layers.Input(shape=(MAX_LENGTH,))
    se1 = layers.Embedding(vocab_size, 20, mask_zero=True, weights=[glove], trainable=False)(inputs2)
    se2 = layers.Dropout(0.2)(se1)
    se3 = layers.LSTM(48)(se2)
    decoder1 = layers.add([fe2, se3])
    decoder2 = layers.Dense(48, activation="relu")(decoder1)
    outputs = layers.Dense(vocab_size, activation="softmax")(decoder2)
    model = tf_keras.Model(inputs=[inputs1, inputs2], outputs=outputs)
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    x_image, x_words, y = training_pairs(features, sequences)
    model.fit([x_image, x_words], y, epochs=12, batch_size=64, verbose=0)
    folder = out / "lstm_h5"
    folder.mkdir()
    model.save(folder / "model.h5")
    (folder / "vocab.pkl").write_bytes(pickle.dumps((wordtoix, ixtoword)))


def keras3_gru(out: Path, features, texts, masked: bool):
    """A Keras 3 merge GRU; masked with a Tokenizer JSON, unmasked with a pickled Keras 2 Tokenizer."""
    import keras
    from keras import layers
    from keras_preprocessing.text import Tokenizer

    tokenizer = Tokenizer(oov_token="<unk>")
    tokenizer.fit_on_texts(texts)
    vocab_size = len(tokenizer.word_index) + 1
    sequences = tokenizer.texts_to_sequences(texts)
    keras.utils.set_random_seed(2)
    image = keras.Input((features.shape[1],))
    words = keras.Input((MAX_LENGTH,))
    a = layers.Dense(40, activation="relu")(layers.Dropout(0.2)(image))
    b = layers.GRU(40)(layers.Dropout(0.2)(layers.Embedding(vocab_size, 24, mask_zero=masked)(words)))
    merged = layers.concatenate([b, a])
    x = layers.Dense(40, activation="relu")(merged)
    model = keras.Model([image, words], layers.Dense(vocab_size, activation="softmax")(x))
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    x_image, x_words, y = training_pairs(features, sequences)
    model.fit([x_image, x_words], y, epochs=12, batch_size=64, verbose=0)
    folder = out / ("gru_keras" if masked else "gru_unmasked")
    folder.mkdir()
    model.save(folder / "model.keras")
    if masked:
        (folder / "tokenizer.json").write_text(tokenizer.to_json())
    else:
        (folder / "tokenizer.pkl").write_bytes(pickle.dumps(tokenizer))


def main(out: Path, inception: bool = False) -> None:
    """Write the models to `out`; with `inception`, only the merge LSTM, over a random InceptionV3."""
    out.mkdir(parents=True, exist_ok=True)
    train_paths, texts = scenes(out, SCENES, 11, "train")
    scenes(out, HELD_OUT, 12, "images")
    texts = [f"startseq {t} endseq" for t in texts]
    if inception:
        images = np.stack([load_image(p, keras_preprocessing("tf", 299)) for p in train_paths])
        lstm_h5(out, build_inception(out, images), texts)
    else:
        features = build_encoder(out, np.stack([load_image(p, keras_preprocessing("tf", IMAGE_SIZE))
                                                for p in train_paths]))
        lstm_h5(out, features, texts)
        keras3_gru(out, features, texts, masked=True)
        keras3_gru(out, features, texts, masked=False)
    (out / "built.json").write_text(json.dumps({"max_length": MAX_LENGTH, "image_size": IMAGE_SIZE,
                                                "inception": inception}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--inception", action="store_true", help="a random InceptionV3 encoder (for the benchmark)")
    arguments = parser.parse_args()
    main(arguments.out, arguments.inception)

"""Trains the two tutorials' models briefly on generated scenes, with the tutorials' own code and
training steps, and saves them as their users do: `python -m training.tutorials.train OUT`.

OUT/keras_io/: model.weights.h5 (caption_model.save_weights), vocabulary.json (get_vocabulary());
OUT/tf_attention/: ckpt-1.* (tf.train.Checkpoint), inception_v3_notop.weights.h5 (a seeded-random
InceptionV3, standing in for the file keras.applications downloads), vocabulary.json;
OUT/images/: held-out scenes. The serving files beside this one are the functions the import reads.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from bundle.preprocess import keras_preprocessing, load_image  # noqa: E402
from training.notebook_zoo import scenes  # noqa: E402

HERE = Path(__file__).parent
SCENES, HELD_OUT = 160, 12


def vectorizer(texts: list[str], max_tokens: int, length: int | None):
    """A TextVectorization as the tutorials make it: lower case, punctuation stripped but < and >."""
    import tensorflow as tf

    strip_chars = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".replace("<", "").replace(">", "")

    def custom_standardization(input_string):
        return tf.strings.regex_replace(tf.strings.lower(input_string), "[%s]" % re.escape(strip_chars), "")

    layer = tf.keras.layers.TextVectorization(max_tokens=max_tokens, output_mode="int",
                                              output_sequence_length=length, standardize=custom_standardization)
    layer.adapt(texts)
    return layer


def masked_loss(labels, logits):
    import tensorflow as tf

    loss = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    mask = tf.cast(tf.not_equal(labels, 0), loss.dtype)
    return tf.reduce_sum(loss * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def train_keras_io(out: Path, paths: list[Path], texts: list[str]) -> None:
    import tensorflow as tf

    sys.path.insert(0, str(HERE))
    import keras_io_captioning as notebook

    tf.keras.utils.set_random_seed(1)
    vectorization = vectorizer([f"<start> {t} <end>" for t in texts], notebook.VOCAB_SIZE, notebook.SEQ_LENGTH)
    sequences = np.asarray(vectorization([f"<start> {t} <end>" for t in texts]))
    images = np.stack([load_image(p, keras_preprocessing("raw", notebook.IMAGE_SIZE[0])) for p in paths])
    folder = out / "keras_io"
    folder.mkdir(parents=True, exist_ok=True)
    cnn_model = notebook.get_cnn_model()
    encoder = notebook.TransformerEncoderBlock(notebook.EMBED_DIM, notebook.FF_DIM, notebook.NUM_HEADS)
    decoder = notebook.TransformerDecoderBlock(notebook.EMBED_DIM, notebook.FF_DIM, notebook.NUM_HEADS)
    model = notebook.ImageCaptioningModel(cnn_model=cnn_model, encoder=encoder, decoder=decoder)
    embedded = np.asarray(cnn_model(images))
    optimizer = tf.keras.optimizers.Adam(2e-3)
    rng = np.random.default_rng(0)
    for _ in range(300):   # the example's train_step, one caption an image
        rows = rng.choice(len(images), 32, replace=False)
        inputs, targets = sequences[rows, :-1], sequences[rows, 1:]
        with tf.GradientTape() as tape:
            encoder_out = encoder(embedded[rows], training=True)
            predictions = decoder(inputs, encoder_out, training=True, mask=tf.math.not_equal(inputs, 0))
            loss = masked_loss(targets, predictions)
        variables = encoder.trainable_variables + decoder.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    model.built = True   # fit() marks it so; this loop is the example's train_step without fit()
    model.save_weights(folder / "model.weights.h5")
    (folder / "vocabulary.json").write_text(json.dumps(vectorization.get_vocabulary()))


def train_tf_attention(out: Path, paths: list[Path], texts: list[str]) -> None:
    import tensorflow as tf

    sys.path.insert(0, str(HERE))
    import tf_attention_captioning as notebook
    import tf_attention_serving as serving

    tf.keras.utils.set_random_seed(2)
    folder = out / "tf_attention"
    folder.mkdir(parents=True, exist_ok=True)
    image_model = tf.keras.applications.InceptionV3(include_top=False, weights=None,
                                                    input_shape=(serving.IMAGE_SIZE, serving.IMAGE_SIZE, 3))
    image_model.save_weights(folder / "inception_v3_notop.weights.h5")
    captions = [f"<start> {t} <end>" for t in texts]
    tokenizer = vectorizer(captions, serving.VOCAB_SIZE, 16)
    targets_all = np.asarray(tokenizer(captions))
    images = np.stack([load_image(p, keras_preprocessing("tf", serving.IMAGE_SIZE)) for p in paths])
    maps = np.concatenate([np.asarray(image_model(images[i:i + 32])) for i in range(0, len(images), 32)])
    maps = maps.reshape(len(maps), -1, maps.shape[-1])
    maps = maps / (maps.std() + 1e-12)   # as np.save'd features would be after the user's own scaling
    encoder = notebook.CNN_Encoder(notebook.embedding_dim)
    decoder = notebook.RNN_Decoder(notebook.embedding_dim, notebook.units, serving.VOCAB_SIZE)
    optimizer = tf.keras.optimizers.Adam(3e-3)
    rng = np.random.default_rng(0)
    for _ in range(200):   # the tutorial's train_step
        rows = rng.choice(len(images), 32, replace=False)
        target = targets_all[rows]
        hidden = decoder.reset_state(batch_size=target.shape[0])
        dec_input = tf.expand_dims(target[:, 0], 1)
        with tf.GradientTape() as tape:
            features = encoder(maps[rows])
            loss = 0
            for i in range(1, target.shape[1]):
                predictions, hidden, _ = decoder(dec_input, features, hidden)
                loss += masked_loss(target[:, i], predictions)
                dec_input = tf.expand_dims(target[:, i], 1)
        variables = encoder.trainable_variables + decoder.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    tf.train.Checkpoint(encoder=encoder, decoder=decoder, optimizer=optimizer).save(str(folder / "ckpt"))
    (folder / "vocabulary.json").write_text(json.dumps(tokenizer.get_vocabulary()))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    paths, texts = scenes(out, SCENES, 21, "train")
    scenes(out, HELD_OUT, 22, "images")
    train_keras_io(out, paths, texts)
    train_tf_attention(out, paths, texts)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    main(parser.parse_args().out)

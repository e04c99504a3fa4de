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
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
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


def calibrate_batchnorms(model, names: list[str], images: np.ndarray) -> None:
    """Stands in for ImageNet weights: a seeded-random network's last maps are about 1e-6 and much the
    same for every scene, so the named BatchNormalization layers (in order) are given the statistics of
    these scenes, as training would have, at a scale that outweighs their epsilon. The maps then tell
    scenes apart; the layers' weights are saved with the model, so serving reads the same network."""
    import keras

    for name in names:
        batchnorm = model.get_layer(name)
        maps = np.concatenate([np.asarray(keras.Model(model.inputs, batchnorm.input)(images[i:i + 32]))
                               for i in range(0, len(images), 32)])
        mean, variance = maps.mean((0, 1, 2)), maps.var((0, 1, 2)) + 1e-20
        # The convolution before it (no bias in these networks) is scaled to unit variance, so that
        # the epsilon no longer outweighs it; the statistics follow the scale.
        conv = batchnorm.input._keras_history[0]
        scale = 1.0 / np.sqrt(variance)
        conv.kernel.assign(np.asarray(conv.kernel) * scale)
        batchnorm.moving_mean.assign(mean * scale)
        batchnorm.moving_variance.assign(variance * scale ** 2)


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
    calibrate_batchnorms(cnn_model, ["top_bn"], images)
    embedded = np.asarray(cnn_model(images))
    optimizer = tf.keras.optimizers.Adam(2e-3)
    rng = np.random.default_rng(0)
    @tf.function
    def train_step(img_embed, batch_seq):   # the example's, one caption an image
        inputs, targets = batch_seq[:, :-1], batch_seq[:, 1:]
        with tf.GradientTape() as tape:
            encoder_out = encoder(img_embed, training=True)
            predictions = decoder(inputs, encoder_out, training=True, mask=tf.math.not_equal(inputs, 0))
            loss = masked_loss(targets, predictions)
        variables = encoder.trainable_variables + decoder.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    for _ in range(300):
        rows = rng.choice(len(images), 32, replace=False)
        train_step(tf.constant(embedded[rows]), tf.constant(sequences[rows]))
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
    images = np.stack([load_image(p, keras_preprocessing("tf", serving.IMAGE_SIZE)) for p in paths])
    last_block = [layer.name for layer in image_model.layers if type(layer).__name__ == "BatchNormalization"][-9:]
    calibrate_batchnorms(image_model, last_block, images)   # mixed10's
    image_model.save_weights(folder / "inception_v3_notop.weights.h5")
    captions = [f"<start> {t} <end>" for t in texts]
    tokenizer = vectorizer(captions, serving.VOCAB_SIZE, 16)
    targets_all = np.asarray(tokenizer(captions))
    maps = np.concatenate([np.asarray(image_model(images[i:i + 32])) for i in range(0, len(images), 32)])
    maps = maps.reshape(len(maps), -1, maps.shape[-1])
    encoder = notebook.CNN_Encoder(notebook.embedding_dim)
    decoder = notebook.RNN_Decoder(notebook.embedding_dim, notebook.units, serving.VOCAB_SIZE)
    optimizer = tf.keras.optimizers.Adam(3e-3)
    rng = np.random.default_rng(0)
    @tf.function
    def train_step(img_tensor, target):   # the tutorial's, as it writes it
        hidden = decoder.reset_state(batch_size=target.shape[0])
        dec_input = tf.expand_dims(target[:, 0], 1)
        loss = 0
        with tf.GradientTape() as tape:
            features = encoder(img_tensor)
            for i in range(1, target.shape[1]):
                predictions, hidden, _ = decoder(dec_input, features, hidden)
                loss += masked_loss(target[:, i], predictions)
                dec_input = tf.expand_dims(target[:, i], 1)
        variables = encoder.trainable_variables + decoder.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    for _ in range(150):
        rows = rng.choice(len(images), 32, replace=False)
        train_step(tf.constant(maps[rows], tf.float32), tf.constant(targets_all[rows]))
    tf.train.Checkpoint(encoder=encoder, decoder=decoder, optimizer=optimizer).save(str(folder / "ckpt"))
    (folder / "vocabulary.json").write_text(json.dumps(tokenizer.get_vocabulary()))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    paths, texts = scenes(out, SCENES, 21, "train")
    scenes(out, HELD_OUT, 22, "images")
    # One process each (spawned: TensorFlow does not survive fork): on two cores both train in about the
    # time of the longer, since much of a small model's step is one core's Python.
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        for done in [pool.submit(train, out, paths, texts) for train in (train_keras_io, train_tf_attention)]:
            done.result()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    main(parser.parse_args().out)

"""How a user of TensorFlow's "Image captioning with visual attention" tutorial serves it: the
functions export.from_code calls (docs/serve-your-own-model.md shows this file). The model code is
imported from the notebook's own module, unchanged; the InceptionV3 weights file is the one
keras.applications downloads (here beside the checkpoint)."""
from pathlib import Path

import tensorflow as tf

from tf_attention_captioning import CNN_Encoder, RNN_Decoder, embedding_dim, units

IMAGE_SIZE = 139            # the tutorial's 299 gives 8x8 = 64 positions; 139 gives 3x3, for the tests
VOCAB_SIZE = 48             # tokenizer.vocabulary_size() when it was trained


def build(checkpoint):
    """The tutorial's encoder and decoder, restored from its tf.train.Checkpoint, and its feature extractor."""
    image_model = tf.keras.applications.InceptionV3(include_top=False, weights=None,
                                                    input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    image_model.load_weights(Path(checkpoint).parent / "inception_v3_notop.weights.h5")
    encoder = CNN_Encoder(embedding_dim)
    decoder = RNN_Decoder(embedding_dim, units, VOCAB_SIZE)
    # Keras 3 makes a layer's variables on its first call, and a checkpoint restores only variables
    # that exist: call both once, then restore, and fail loudly if anything was left out.
    features = encoder(tf.zeros((1, 9, 2048)))
    decoder(tf.zeros((1, 1), tf.int32), features, decoder.reset_state(batch_size=1))
    tf.train.Checkpoint(encoder=encoder, decoder=decoder).restore(checkpoint).assert_existing_objects_matched()
    return image_model, encoder, decoder


def encode(model, images):
    """evaluate()'s first lines: InceptionV3's last map as positions, then CNN_Encoder."""
    image_model, encoder, _ = model
    features = image_model(images)
    return encoder(tf.reshape(features, (tf.shape(features)[0], -1, features.shape[3])))


def initial_state(model, memory):
    return model[2].reset_state(batch_size=tf.shape(memory)[0])


def step(model, memory, token, hidden):
    """One word of evaluate()'s loop: (predictions, hidden, attention_weights)."""
    return model[2](token, memory, hidden)

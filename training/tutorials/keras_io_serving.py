"""How a user of keras.io's "Image captioning" serves it: the functions export.from_code calls
(docs/serve-your-own-model.md shows this file). The model code is imported from the notebook's own
module, unchanged."""
import tensorflow as tf

from keras_io_captioning import (EMBED_DIM, FF_DIM, IMAGE_SIZE, NUM_HEADS, SEQ_LENGTH, ImageCaptioningModel,
                                 TransformerDecoderBlock, TransformerEncoderBlock, get_cnn_model)


def build(weights):
    """The notebook's model, as it built it, with the weights it saved (caption_model.save_weights)."""
    cnn_model = get_cnn_model()
    encoder = TransformerEncoderBlock(embed_dim=EMBED_DIM, dense_dim=FF_DIM, num_heads=NUM_HEADS)
    decoder = TransformerDecoderBlock(embed_dim=EMBED_DIM, ff_dim=FF_DIM, num_heads=NUM_HEADS)
    model = ImageCaptioningModel(cnn_model=cnn_model, encoder=encoder, decoder=decoder)
    words = tf.zeros((1, SEQ_LENGTH - 1), tf.int64)
    decoder(words, encoder(cnn_model(tf.zeros((1, *IMAGE_SIZE, 3))), training=False), training=False,
            mask=tf.math.not_equal(words, 0))   # creates the variables
    model.built = True                        # as fit() left it when the weights were saved
    model.load_weights(weights)
    return model


def encode(model, images):
    """generate_caption's first lines: the CNN, then the Transformer encoder."""
    return model.encoder(model.cnn_model(images), training=False)


def next_word(model, memory, words):
    """generate_caption's decoder call on the post-padded caption so far."""
    words = tf.cast(words, tf.int64)
    return model.decoder(words, memory, training=False, mask=tf.math.not_equal(words, 0))

"""Reading notebook decoders by what they compute, in Keras alone (no training, no ONNX): where the
image joins, which kind of decoding reproduces the model, and the stepped graphs against the whole
model on padded prefixes, for every builder of the zoo and for models written here."""
import keras
import numpy as np
import pytest
from keras import layers

from export.notebook_decoder import (DecoderImportError, analyse, decoder_models, keras_decode_steps,
                                     whole_model_steps)
from training.notebook_zoo import MAX_LENGTH, ZOO, decoder

FEATURES = np.random.default_rng(0).normal(size=(6, 32)).astype(np.float32)


def quiet(_message):
    pass


@pytest.mark.parametrize("spec", [s for s in ZOO if s.framework == "keras"], ids=lambda s: s.name)
def test_every_keras3_zoo_builder_is_read_and_decoded_as_the_zoo_says(spec):
    keras.utils.set_random_seed(5)
    model = decoder(spec, keras, 32, 43, FEATURES)
    for layer in model.layers:  # untrained embeddings are so small that reading the pads hardly shows
        if isinstance(layer, layers.Embedding):
            layer.set_weights([np.random.default_rng(2).normal(size=layer.get_weights()[0].shape)])
    found = analyse(model)
    init, step, state = decoder_models(found, FEATURES, start=1, log=quiet)
    assert found.architecture == [spec.architecture] and found.kind == spec.kind, found.fallback
    assert found.padding == ("post" if "sequence" in spec.options else "pre")
    keys = [s.key for s in state]
    if spec.kind == "whole_prefix":
        assert keys == ["prefix", "context"]
    else:
        rnns = 2 if "stacked" in spec.options else 1
        per_rnn = 1 if {"gru", "simple"} & set(spec.options) else 2
        assert len([k for k in keys if not k.startswith("context")]) == rnns * per_rnn
    prefixes = np.random.default_rng(1).integers(1, 43, size=(6, MAX_LENGTH)).astype(np.int32)
    stepped = keras_decode_steps(init, step, FEATURES, prefixes)[:, :, 1:]
    assert np.abs(stepped - whole_model_steps(found, FEATURES, prefixes)[:, :, 1:]).max() < 1e-4


def words_and_image():
    return keras.Input((32,)), keras.Input((MAX_LENGTH,))


def test_a_model_written_differently_init_and_merge_with_an_rnn_of_a_cell():
    image, words = words_and_image()
    picture = layers.Dense(16, activation="relu")(layers.BatchNormalization()(image))
    embedded = layers.SpatialDropout1D(0.1)(layers.Embedding(43, 8, mask_zero=True)(words))
    rnn = layers.RNN(layers.LSTMCell(16), return_sequences=True)
    sequence = rnn(embedded, initial_state=[picture, picture], mask=keras.ops.not_equal(words, 0))
    text = layers.GRU(12)(layers.TimeDistributed(layers.Dense(10, activation="tanh"))(sequence))
    head = layers.LayerNormalization()(layers.concatenate([picture, text, layers.Dense(4)(image)]))
    model = keras.Model([words, image], layers.Dense(43, activation="softmax")(head))
    found = analyse(model)
    assert found.architecture == ["init-inject", "merge"] and not found.feature_input_first
    init, step, state = decoder_models(found, FEATURES, start=1, log=quiet)
    assert found.kind == "step", found.fallback
    assert [s.key for s in state] == ["h", "c", "h2", "context", "context2"]


@pytest.mark.filterwarnings("ignore:Layer 'conv1d'")
def test_a_bidirectional_or_convolutional_text_branch_is_served_whole_prefix():
    # Seeded, with embeddings of unit scale: untrained ones are so small that a convolution reading
    # the pads moves the probabilities by about STEPPING_ATOL, and the test's order set the outcome.
    keras.utils.set_random_seed(3)
    for text_layer in (layers.Bidirectional(layers.LSTM(8)),
                       lambda x: layers.LSTM(8)(layers.Conv1D(8, 3, padding="same")(x))):
        image, words = words_and_image()
        embedding = layers.Embedding(43, 8, mask_zero=True, embeddings_initializer="random_normal")
        text = text_layer(embedding(words))
        model = keras.Model([image, words], layers.Dense(43, activation="softmax")(
            layers.add([layers.Dense(text.shape[-1])(image), text])))
        embedding.set_weights([np.random.default_rng(2).normal(size=(43, 8))])
        found = analyse(model)
        messages = []
        decoder_models(found, FEATURES, start=1, log=messages.append)
        assert found.kind == "whole_prefix" and found.fallback and "whole model" in messages[-1]


@pytest.mark.parametrize("build, message", [
    (lambda i, w: keras.Model([i, w], layers.Dense(43, activation="softmax")(layers.Dense(8)(i))),
     "feeding an Embedding"),
    (lambda i, w: keras.Model([i, w], layers.Dense(43, activation="softmax")(
        layers.add([layers.Dense(8)(i), layers.LSTM(8, return_sequences=True)(layers.Embedding(43, 8)(w))[:, :5]]))),
     "5 positions for 12 words"),
    (lambda i, w: keras.Model([i, w], [layers.Dense(43)(i), layers.LSTM(43)(layers.Embedding(43, 8)(w))]),
     "2 outputs"),
])
def test_what_is_no_caption_decoder_is_refused_naming_why(build, message):
    with pytest.raises(DecoderImportError, match=message):
        analyse(build(*words_and_image()))


def test_a_transformer_with_logits_is_served_whole_prefix_from_its_logits():
    image, words = words_and_image()
    embedded = layers.Embedding(43, 16)(words)
    x = layers.add([embedded, layers.MultiHeadAttention(2, 8)(embedded, embedded, use_causal_mask=True)])
    x = layers.MultiHeadAttention(2, 8)(x, layers.Reshape((1, 16))(layers.Dense(16)(image)))
    model = keras.Model([image, words], layers.Dense(43)(x))   # logits for every position
    found = analyse(model, padding="post")
    assert (found.padding, found.scores, found.sequence_output, found.recurrent) == ("post", "logits", True, [])
    messages = []
    init, step, state = decoder_models(found, FEATURES, start=1, log=messages.append)
    assert found.kind == "whole_prefix" and "a next word per position" in messages[-1]
    prefixes = np.random.default_rng(1).integers(1, 43, size=(6, MAX_LENGTH + 3)).astype(np.int32)
    stepped = keras_decode_steps(init, step, FEATURES, prefixes)[:, :MAX_LENGTH, 1:]
    want = whole_model_steps(found, FEATURES, prefixes[:, :MAX_LENGTH])[:, :, 1:]
    assert np.abs(stepped / stepped.sum(-1, keepdims=True) - want / want.sum(-1, keepdims=True)).max() < 1e-5


def test_an_exact_gelu_converts_to_onnx():
    """Keras' exact gelu is TensorFlow's Erfc, which ONNX lacks: converted as 1 - Erf."""
    import onnxruntime as ort

    from bundle.specs import GraphSpec, tensor
    from export.convert import convert

    inputs = keras.Input((8,), name="features")
    model = keras.Model(inputs, layers.Dense(4, activation="gelu")(inputs))
    spec = GraphSpec("decoder_init", (tensor("features", "float32", 8),), (tensor("context", "float32", 4),))
    session = ort.InferenceSession(convert(model, spec).SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32) * 3
    assert np.abs(session.run(None, {"features": x})[0] - np.asarray(model(x))).max() < 1e-5

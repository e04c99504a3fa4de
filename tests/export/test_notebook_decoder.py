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
    for text_layer in (layers.Bidirectional(layers.LSTM(8)),
                       lambda x: layers.LSTM(8)(layers.Conv1D(8, 3, padding="same")(x))):
        image, words = words_and_image()
        text = text_layer(layers.Embedding(43, 8, mask_zero=True)(words))
        model = keras.Model([image, words], layers.Dense(43, activation="softmax")(
            layers.add([layers.Dense(text.shape[-1])(image), text])))
        found = analyse(model)
        messages = []
        decoder_models(found, FEATURES, start=1, log=messages.append)
        assert found.kind == "whole_prefix" and found.fallback and "whole model" in messages[-1]


@pytest.mark.parametrize("build, message", [
    (lambda i, w: keras.Model([i, w], layers.Dense(43, activation="softmax")(layers.Dense(8)(i))),
     "feeding an Embedding"),
    (lambda i, w: keras.Model([i, w], layers.Dense(43, activation="softmax")(
        layers.add([layers.Dense(8)(i), layers.GlobalAveragePooling1D()(layers.Embedding(43, 8)(w))]))),
     "no recurrent layer"),
    (lambda i, w: keras.Model([i, w], [layers.Dense(43)(i), layers.LSTM(43)(layers.Embedding(43, 8)(w))]),
     "2 outputs"),
])
def test_what_is_no_caption_decoder_is_refused_naming_why(build, message):
    with pytest.raises(DecoderImportError, match=message):
        analyse(build(*words_and_image()))


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

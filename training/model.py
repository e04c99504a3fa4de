"""The captioning model: an InceptionV3 feature encoder and an LSTM decoder, pooled or attending.

The pooled decoder reads the encoder's global-average-pooled features [B,2048]; the attention
decoder reads its 8x8 map before pooling, as 64 positions [B,64,2048], and attends over them at
every step (soft attention, as in Show, Attend and Tell, scored after the LSTM as in Luong's).
Each is built once from shared layers into three Keras models:
  training model  (features, tokens)                -> logits      (teacher forcing)
  init model      (features)                        -> h, c, context[, memory]
  step model      (token [B,1], h, c, context[, memory]) -> log_probs [B,V], h, c[, attention [B,64]]
`context` is the projected (pooled) image, fed at every step when `image_every_step` is on
(par-inject); h and c start from the image either way (init-inject). `memory` [B,64,A] is the
map projected once by the init model, so each step only scores it against the LSTM's output;
the step also returns its weights over the 64 positions, for clients that draw them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

IMAGE_SIZE = 299
MAP_POSITIONS = 64  # InceptionV3's last map at 299x299 input: 8x8
# Keras' own preprocess_input for InceptionV3 ("tf" mode): pixels in [0, 255] -> [-1, 1].
PREPROCESSING = {"resize": [IMAGE_SIZE, IMAGE_SIZE], "resample": "bilinear", "channels": "RGB",
                 "layout": "NHWC", "scale": 1 / 127.5, "offset": -1.0}


@dataclass
class DecoderSettings:
    """The decoder's architecture as a person chooses it (a training setting); the data fixes the rest."""

    units: int = 512           # LSTM units (h and c size)
    embedding_dim: int = 256   # word embedding size, also the projected image size
    dropout: float = 0.3       # on the LSTM output; 0 <= dropout < 1
    image_dropout: float = 0.3  # on the standardised image features; 0 <= image_dropout < 1
    image_every_step: bool = True  # par-inject: feed the projected image at every step, not only as the initial state
    feature_norm: str = "standardise"  # "standardise" per dimension, "l2-standardise" (unit length first), or "none"
    attention: bool = False    # attend over the encoder's 8x8 map instead of reading its pooled vector
    captions_per_image: int = 5  # attention decoder: captions trained together per image (map projected once)

    def problems(self) -> list[str]:
        checks = {"units": self.units > 0, "embedding_dim": self.embedding_dim > 0,
                  "dropout": 0 <= self.dropout < 1, "image_dropout": 0 <= self.image_dropout < 1,
                  "feature_norm": self.feature_norm in FEATURE_NORMS, "captions_per_image": self.captions_per_image > 0}
        return [f"{name}={getattr(self, name)!r}" for name, ok in checks.items() if not ok]


@dataclass(kw_only=True)
class DecoderConfig(DecoderSettings):
    """The whole decoder architecture; stored with every run so a model can be rebuilt from it."""

    vocab_size: int
    max_length: int            # longest caption in words, without <start>/<end>

    def as_dict(self) -> dict:
        return asdict(self)


def build_encoder(weights: str, image_size: int = IMAGE_SIZE, spatial: bool = False) -> keras.Model:
    """InceptionV3 without its top: global-average-pooled to 2048-d features, or (`spatial`) its
    last map before pooling as [positions, 2048] for the attention decoder.

    `weights`: "imagenet" (downloads; needs internet), "random:SEED" (deterministic random
    weights), or a path to a local Keras weights file (.h5 / .weights.h5) for this architecture.
    """
    model = _inception_v3(weights, image_size, pooling=None if spatial else "avg")
    if spatial:
        model = keras.Model(model.input, _positions(model.output), name="inception_v3_map")
        model.trainable = False
    return model


def build_trunk(weights: str, tap: str, image_size: int = IMAGE_SIZE) -> keras.Model:
    """The frozen InceptionV3 a learned encoder part reads: image -> [the `tap` block's map, the last map]."""
    model = _inception_v3(weights, image_size, pooling=None)
    try:
        tapped = model.get_layer(tap).output
    except ValueError:
        raise ValueError(f"InceptionV3 has no block {tap!r} to read (mixed0 ... mixed10)") from None
    trunk = keras.Model(model.input, [tapped, model.output], name="inception_v3_trunk")
    trunk.trainable = False
    return trunk


def _positions(feature_map):
    _, height, width, channels = feature_map.shape
    return layers.Reshape((height * width, channels), name="positions")(feature_map)


def _inception_v3(weights: str, image_size: int, pooling: str | None) -> keras.Model:
    """InceptionV3 without its top, frozen, with the weights `weights` names (see build_encoder)."""
    shape = (image_size, image_size, 3)
    if weights == "imagenet":
        model = keras.applications.InceptionV3(weights="imagenet", include_top=False, pooling=pooling, input_shape=shape)
    elif weights.startswith("random:"):
        try:
            seed = int(weights.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"encoder weights {weights!r}: expected random:<integer seed>") from None
        keras.utils.set_random_seed(seed)
        model = keras.applications.InceptionV3(weights=None, include_top=False, pooling=pooling, input_shape=shape)
        centre_stem_filters(model)
    else:
        path = Path(weights)
        if not path.is_file():
            raise ValueError(f"encoder weights {weights!r}: not 'imagenet', 'random:SEED' or an existing file")
        model = keras.applications.InceptionV3(weights=None, include_top=False, pooling=pooling, input_shape=shape)
        try:  # skip_mismatch stays off: a file for another architecture must fail, not half-load
            model.load_weights(str(path))
        except (ValueError, KeyError, OSError) as exc:
            raise ValueError(f"encoder weights {weights!r} do not fit InceptionV3 without its top: {exc}") from None
    model.trainable = False
    return model


RANDOM_WEIGHTS_NOTE = ("Keras' default initialisers with the given seed, not trained; each filter of the "
                       "first convolution then centred to sum to zero (blind to uniform brightness)")


def centre_stem_filters(model: keras.Model) -> None:
    """Make each filter of the first convolution sum to zero over its 3x3xRGB window.

    The stem convolution has 'valid' padding and no bias, so zero-sum filters make a random
    encoder blind to a uniform brightness shift, as trained first layers roughly are. With Keras' plain
    random filters, background brightness swamped the shape signal in the pooled features:
    ridge probes on 960 synthetic scenes read a lone object's shape 63 % right, and 88 % after
    centring (colour 96 -> 98 %, size 84 -> 93 %).
    """
    stem = next(layer for layer in model.layers if isinstance(layer, layers.Conv2D))
    kernel = stem.get_weights()[0]
    stem.set_weights([kernel - kernel.mean(axis=(0, 1, 2), keepdims=True)])


# "none": the features reach the decoder as they are, for a learned encoder part that standardises its own inputs.
FEATURE_NORMS = ("standardise", "l2-standardise", "none")


def feature_statistics(features: np.ndarray, feature_norm: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of training features (over images and, for a map, its positions),
    after the unit-length step if `feature_norm` has one; zeros and ones for "none"."""
    features = features.reshape(-1, features.shape[-1])
    if feature_norm == "none":
        return np.zeros(features.shape[-1], np.float32), np.ones(features.shape[-1], np.float32)
    if feature_norm == "l2-standardise":
        features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return features.mean(0), np.maximum(features.std(0), 1e-8)


def build_decoder(config: DecoderConfig, feature_mean: np.ndarray, feature_std: np.ndarray,
                  positions: int = MAP_POSITIONS):
    """Build (training_model, init_model, step_model), all sharing one set of weights.

    feature_mean/std (from `feature_statistics`; their length is the feature size) standardise the
    encoder features inside the graph (the features of a random InceptionV3 are tiny, so the decoder
    would otherwise see a near-constant input). `positions` is the map's size, for the attention decoder.
    The attention decoder's training model takes captions_per_image captions of each image
    (tokens [B,K,T] -> logits [B,K,T,V]), so the map is projected once per image, not per caption.
    """
    c = config
    if c.feature_norm not in FEATURE_NORMS:
        raise ValueError(f"feature_norm {c.feature_norm!r}: expected one of {', '.join(FEATURE_NORMS)}")
    standardise = (layers.Identity(name="feature_norm") if c.feature_norm == "none" else
                   layers.Normalization(mean=feature_mean, variance=np.square(feature_std), name="feature_norm"))
    unit_length = layers.UnitNormalization(name="unit_length") if c.feature_norm == "l2-standardise" else None
    init_h = layers.Dense(c.units, activation="tanh", name="init_h")
    init_c = layers.Dense(c.units, activation="tanh", name="init_c")
    project = layers.Dense(c.embedding_dim, activation="relu", name="image_projection")
    feature_dropout = layers.Dropout(c.image_dropout, name="image_dropout")
    embed = layers.Embedding(c.vocab_size, c.embedding_dim, name="embedding")
    lstm = layers.LSTM(c.units, return_sequences=True, return_state=True, name="lstm")
    output_dropout = layers.Dropout(c.dropout, name="output_dropout")
    to_vocab = layers.Dense(c.vocab_size, name="logits")
    # Attention: the map projected once into keys/values, the LSTM output into a query.
    to_memory = layers.Dense(c.embedding_dim, name="attention_memory")
    to_query = layers.Dense(c.embedding_dim, name="attention_query")
    attend = layers.AdditiveAttention(name="attention")
    pool = layers.GlobalAveragePooling1D(name="pool_positions")
    feature_dim = len(feature_mean)
    feature_shape = (positions, feature_dim) if c.attention else (feature_dim,)

    def image_inputs(features):
        """h0, c0, context and (attention) memory from the encoder's features."""
        normalised = standardise(unit_length(features) if unit_length else features)
        normalised = feature_dropout(normalised)
        if not c.attention:
            return [init_h(normalised), init_c(normalised), project(normalised)]
        pooled = pool(normalised)
        return [init_h(pooled), init_c(pooled), project(pooled), to_memory(normalised)]

    def words_in(tokens, context, steps):
        words = embed(tokens)
        if c.image_every_step:
            words = layers.Concatenate(name="word_and_image")([words, layers.RepeatVector(steps)(context)])
        return words

    def head(sequence, memory):
        """Logits from the LSTM's outputs [B,T,U] and, attending, the memory [B,P,A]; and the
        attention weights [B,T,P] (None without attention)."""
        weights = None
        if c.attention:
            attended, weights = attend([to_query(sequence), memory], return_attention_scores=True)
            sequence = layers.Concatenate(name="output_and_attended")([sequence, attended])
        return to_vocab(output_dropout(sequence)), weights

    # Teacher-forced training model over whole captions.
    steps = c.max_length + 1
    features = keras.Input(feature_shape, name="features")
    h0, c0, context, *memory = image_inputs(features)
    if c.attention:
        k = c.captions_per_image
        tokens = keras.Input((k, steps), dtype="int32", name="tokens")
        h0, c0, context, memory = (layers.Lambda(lambda x: keras.ops.repeat(x, k, axis=0))(x)
                                   for x in (h0, c0, context, memory[0]))
        flat_tokens = layers.Lambda(lambda t: keras.ops.reshape(t, (-1, steps)))(tokens)
        sequence, _, _ = lstm(words_in(flat_tokens, context, steps), initial_state=[h0, c0])
        logits = layers.Lambda(lambda x: keras.ops.reshape(x, (-1, k, steps, c.vocab_size)))(head(sequence, memory)[0])
    else:
        tokens = keras.Input((steps,), dtype="int32", name="tokens")
        sequence, _, _ = lstm(words_in(tokens, context, steps), initial_state=[h0, c0])
        logits, _ = head(sequence, None)
    training_model = keras.Model([features, tokens], logits, name="decoder_training")

    # Initial state from the image.
    init_features = keras.Input(feature_shape, name="features")
    init_model = keras.Model(init_features, image_inputs(init_features), name="decoder_init")

    # One step: the LSTM's own cell, so the step runs exactly the weights that training learned.
    token = keras.Input((1,), dtype="int32", name="token")
    h_in = keras.Input((c.units,), name="h")
    c_in = keras.Input((c.units,), name="c")
    context_in = keras.Input((c.embedding_dim,), name="context")
    state_in = [h_in, c_in, context_in]
    word = layers.Reshape((c.embedding_dim,))(embed(token))
    if c.image_every_step:
        word = layers.Concatenate()([word, context_in])
    out, (h_out, c_out) = lstm.cell(word, [h_in, c_in])
    attention = []
    if c.attention:
        memory_in = keras.Input((positions, c.embedding_dim), name="memory")
        state_in.append(memory_in)
        logits, weights = head(layers.Reshape((1, c.units))(out), memory_in)
        logits = layers.Reshape((c.vocab_size,))(logits)
        attention = [layers.Reshape((positions,), name="attention_weights")(weights)]
    else:  # the pooled step graph as it always was: no sequence axis to add and take away
        logits = to_vocab(out)
    log_probs = layers.Activation("log_softmax", name="log_probs")(logits)
    step_model = keras.Model([token, *state_in], [log_probs, h_out, c_out, *attention], name="decoder_step")
    return training_model, init_model, step_model

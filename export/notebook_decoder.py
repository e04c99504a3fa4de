"""A notebook's "merge" decoder -> the bundle's decoder_init and decoder_step Keras models.

The classic model takes (image features, pre-padded word ids) and predicts the next word:
    features -> [Dropout, Dense, normalisation ...] ----------------\\
    words -> Embedding -> [Dropout ...] -> LSTM|GRU (last output) -> add|concatenate -> [Dense ...] -> softmax
When the Embedding masks the padding (mask_zero=True), the RNN skips the pads, so its state after
a prefix does not depend on how many pads precede it: the decoder then steps one word at a time on
a carried state, with the RNN's own cell and trained weights (`step` kind). Without masking the
state depends on the padding, which changes as the caption grows; the decoder then re-runs the
whole model on the padded prefix at every step (`whole_prefix` kind): exact, and slower.
Anything else is refused in one line naming the layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops

from bundle.specs import StateSpec

# Layers that compute one vector from one vector at inference, and so may sit in the image branch
# or after the merge.
PER_VECTOR = (layers.Dense, layers.Dropout, layers.Activation, layers.BatchNormalization,
              layers.LayerNormalization, layers.GaussianNoise, layers.GaussianDropout, layers.AlphaDropout,
              layers.ReLU, layers.LeakyReLU, layers.ELU, layers.Softmax)
# Between the Embedding and the RNN: layers that change nothing at inference.
BETWEEN_EMBEDDING_AND_RNN = (layers.Dropout, layers.SpatialDropout1D, layers.GaussianNoise, layers.GaussianDropout)
MERGES = (layers.Add, layers.Concatenate)
RNNS = (layers.LSTM, layers.GRU)


class DecoderImportError(ValueError):
    """A decoder the tool cannot map exactly; the message names the layer and the reason."""


def _describe(layer) -> str:
    return f"layer {layer.name!r} ({type(layer).__name__})"


def _parents(model: keras.Model, layer) -> list:
    """The layers whose outputs `layer` takes (a mask computed on the side is not a parent)."""
    if len(layer._inbound_nodes) != 1:
        raise DecoderImportError(f"{_describe(layer)} is used {len(layer._inbound_nodes)} times; "
                                 "shared layers are not supported")
    known = set(id(l) for l in model.layers)
    return [t._keras_history[0] for t in layer._inbound_nodes[0].input_tensors
            if id(t._keras_history[0]) in known]


def _chain_to_input(model: keras.Model, layer) -> list:
    """Layers from an Input up to `layer` (inclusive), in the order they run; one parent each."""
    chain = []
    while not isinstance(layer, layers.InputLayer):
        chain.append(layer)
        parents = _parents(model, layer)
        if len(parents) != 1:
            raise DecoderImportError(f"{_describe(layer)} takes {len(parents)} inputs where the tool expects one "
                                     "(a merge decoder has exactly one merge)")
        layer = parents[0]
    return [layer] + chain[::-1]


@dataclass
class MergeDecoder:
    """The parts of a merge decoder, found in a trained Keras model."""

    model: keras.Model
    image_branch: list           # features -> the merge's image input
    embedding: layers.Embedding
    rnn: layers.RNN
    merge: layers.Layer
    image_first: bool            # the merge's inputs in order: image then text (matters for concatenate)
    head: list                   # merge -> probabilities
    masked: bool                 # the Embedding masks padding (id 0), so the RNN skips it
    max_length: int
    feature_dim: int
    vocab_size: int
    feature_input_first: bool    # model.inputs order: (features, words) or (words, features)

    @property
    def kind(self) -> str:
        return "step" if self.masked else "whole_prefix"

    def describe(self) -> dict:
        """What the tool found, for the log and the manifest."""
        return {
            "decoder_kind": self.kind,
            "image_branch": [f"{l.name} ({type(l).__name__})" for l in self.image_branch],
            "embedding": {"name": self.embedding.name, "input_dim": int(self.embedding.input_dim),
                          "output_dim": int(self.embedding.output_dim), "mask_zero": bool(self.embedding.mask_zero),
                          "trainable": bool(self.embedding.trainable)},
            "rnn": {"name": self.rnn.name, "type": type(self.rnn).__name__, "units": int(self.rnn.units)},
            "merge": f"{self.merge.name} ({type(self.merge).__name__})",
            "head": [f"{l.name} ({type(l).__name__})" for l in self.head],
            "padding": "pre (pad_sequences' default); id 0",
            "masking": bool(self.masked),
            "max_length": self.max_length,
            "feature_dim": self.feature_dim,
            "vocab_size": self.vocab_size,
        }


def analyse(model: keras.Model) -> MergeDecoder:
    """Find the branches of a merge decoder; DecoderImportError names what does not fit."""
    if len(model.inputs) != 2 or len(model.outputs) != 1:
        raise DecoderImportError(f"the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                                 "a merge decoder takes (image features, word ids) and gives next-word probabilities")
    for layer in model.layers:
        if isinstance(layer, layers.Bidirectional):
            raise DecoderImportError(f"{_describe(layer)}: bidirectional RNNs cannot generate word by word")
        if isinstance(layer, (layers.Attention, layers.AdditiveAttention, layers.MultiHeadAttention)):
            raise DecoderImportError(f"{_describe(layer)}: attention decoders are not supported by this importer")
        if isinstance(layer, layers.Lambda):
            raise DecoderImportError(f"{_describe(layer)}: Lambda layers run arbitrary code and cannot be mapped")
    output_layer = model.outputs[0]._keras_history[0]
    head, layer = [], output_layer
    while True:
        parents = _parents(model, layer)
        if len(parents) == 2:
            break
        if len(parents) != 1 or isinstance(parents[0], layers.InputLayer):
            raise DecoderImportError("no merge of an image branch and a text branch was found before the output "
                                     f"(at {_describe(layer)})")
        head.append(layer)
        layer = parents[0]
    merge = layer
    if not isinstance(merge, MERGES):
        raise DecoderImportError(f"{_describe(merge)} merges the branches; only add and concatenate are supported")
    head = head[::-1]
    branches = [_chain_to_input(model, parent) for parent in _parents(model, merge)]
    text_index = [i for i, chain in enumerate(branches) if any(isinstance(l, RNNS + (layers.RNN,)) for l in chain)]
    if len(text_index) != 1:
        raise DecoderImportError(f"{_describe(merge)}: expected one branch with an LSTM or GRU, found {len(text_index)}")
    text, image = branches[text_index[0]], branches[1 - text_index[0]]
    for layer in image[1:] + head:
        if not isinstance(layer, PER_VECTOR):
            raise DecoderImportError(f"{_describe(layer)} is not supported in the image branch or after the merge")
    embedding, *between, rnn = text[1:]
    if not isinstance(embedding, layers.Embedding):
        raise DecoderImportError(f"{_describe(embedding)}: the text branch must start with an Embedding")
    for layer in between:
        if not isinstance(layer, BETWEEN_EMBEDDING_AND_RNN):
            raise DecoderImportError(f"{_describe(layer)} between the Embedding and the RNN is not supported")
    if not isinstance(rnn, RNNS):
        raise DecoderImportError(f"{_describe(rnn)}: the text branch must end with an LSTM or GRU")
    if rnn.return_sequences or rnn.return_state or rnn.go_backwards or rnn.stateful:
        raise DecoderImportError(f"{_describe(rnn)}: only an RNN returning its last output, forwards and "
                                 "stateless, can be stepped")
    last = head[-1] if head else None
    if not (isinstance(last, layers.Softmax) or (isinstance(last, layers.Activation) and last.activation.__name__ == "softmax")
            or (isinstance(last, layers.Dense) and last.activation.__name__ == "softmax")):
        raise DecoderImportError("the model must end in a softmax over the vocabulary "
                                 f"(it ends in {_describe(last) if last else 'the merge'})")
    words_input, features_input = text[0], image[0]
    feature_dim = int(features_input.output.shape[-1])
    max_length = int(words_input.output.shape[-1])
    masked = bool(embedding.mask_zero) and len(rnn._inbound_nodes[0].input_tensors) > 1
    return MergeDecoder(model=model, image_branch=image[1:], embedding=embedding, rnn=rnn, merge=merge,
                        image_first=text_index[0] == 1, head=head, masked=masked, max_length=max_length,
                        feature_dim=feature_dim, vocab_size=int(model.outputs[0].shape[-1]),
                        feature_input_first=model.inputs[0] is features_input.output)


class ZeroState(layers.Layer):
    """A zero state of `units` per row of its input (the RNN's initial state)."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def call(self, x):
        return ops.zeros((ops.shape(x)[0], self.units), dtype="float32")


class PrefixStart(layers.Layer):
    """An all-padding prefix of `length` word ids per row of its input."""

    def __init__(self, length: int, **kwargs):
        super().__init__(**kwargs)
        self.length = length

    def call(self, x):
        return ops.zeros((ops.shape(x)[0], self.length), dtype="int32")


class NextWordLogProbs(layers.Layer):
    """The model's last layer as log-probabilities (log_softmax of its logits when it is a softmax
    Dense, for precision); id 0, padding, is never a word and never chosen."""

    def __init__(self, last: layers.Layer, vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        self.last, self.vocab_size = last, vocab_size

    def call(self, x):
        if isinstance(self.last, layers.Dense):
            x = ops.matmul(x, self.last.kernel)
            if self.last.use_bias:
                x = x + self.last.bias
        return ops.log_softmax(x, axis=-1) + _padding_penalty(self.vocab_size)


def _padding_penalty(vocab_size: int) -> np.ndarray:
    penalty = np.zeros(vocab_size, np.float32)
    penalty[0] = -1e9
    return penalty


class WholePrefixStep(layers.Layer):
    """One step of the notebooks' loop: the word joins the pre-padded prefix (its oldest id drops
    out, as pad_sequences keeps the last max_length) and the whole model runs on it."""

    def __init__(self, model: keras.Model, features_first: bool, vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        self.model, self.features_first, self.vocab_size = model, features_first, vocab_size

    def call(self, token, prefix, context):
        prefix_next = ops.concatenate([prefix[:, 1:], ops.cast(token, prefix.dtype)], axis=1)
        words = ops.cast(prefix_next, "float32")
        probs = self.model([context, words] if self.features_first else [words, context])
        return ops.log(ops.maximum(probs, 1e-30)) + _padding_penalty(self.vocab_size), prefix_next


def _image_context(decoder: MergeDecoder, features):
    for layer in decoder.image_branch:
        features = layer(features)
    return features


def _merge(decoder: MergeDecoder, image, text):
    return decoder.merge([image, text] if decoder.image_first else [text, image])


def state_specs(decoder: MergeDecoder) -> list[StateSpec]:
    """The decoder's state, in decoder_init's output order."""
    if decoder.kind == "whole_prefix":
        return [StateSpec("prefix", "int32", (decoder.max_length,), True),
                StateSpec("context", "float32", (decoder.feature_dim,), False)]
    units = int(decoder.rnn.units)
    context = int(decoder.image_branch[-1].output.shape[-1]) if decoder.image_branch else decoder.feature_dim
    hidden = [StateSpec("h", "float32", (units,), True)]
    if isinstance(decoder.rnn, layers.LSTM):
        hidden.append(StateSpec("c", "float32", (units,), True))
    return hidden + [StateSpec("context", "float32", (context,), False)]


def step_models(decoder: MergeDecoder) -> tuple[keras.Model, keras.Model]:
    """(decoder_init, decoder_step) Keras models sharing the trained layers, shaped as state_specs says."""
    features = keras.Input((decoder.feature_dim,), name="features")
    token = keras.Input((1,), dtype="int32", name="token")
    if decoder.kind == "whole_prefix":
        # The image goes in raw: the whole model (image branch included) runs at every step.
        init = keras.Model(features, [PrefixStart(decoder.max_length, name="prefix_start")(features),
                                      layers.Identity(name="image_features")(features)])
        prefix = keras.Input((decoder.max_length,), dtype="int32", name="prefix")
        context = keras.Input((decoder.feature_dim,), name="context")
        step = WholePrefixStep(decoder.model, decoder.feature_input_first, decoder.vocab_size, name="whole_prefix")
        return init, keras.Model([token, prefix, context], list(step(token, prefix, context)))

    lstm = isinstance(decoder.rnn, layers.LSTM)
    units = int(decoder.rnn.units)
    context = _image_context(decoder, features)
    zeros = [ZeroState(units, name=f"zero_{key}")(features) for key in (("h", "c") if lstm else ("h",))]
    init = keras.Model(features, [*zeros, context])

    state = [keras.Input((units,), name=key) for key in (("h", "c") if lstm else ("h",))]
    carried = keras.Input((int(context.shape[-1]),), name="context")
    embedded = ops.squeeze(decoder.embedding(token), axis=1)
    output, new_state = decoder.rnn.cell(embedded, state if lstm else state[0])
    new_state = list(new_state) if isinstance(new_state, (list, tuple)) else [new_state]
    x = _merge(decoder, carried, output)
    for layer in decoder.head[:-1]:
        x = layer(x)
    log_probs = NextWordLogProbs(decoder.head[-1], decoder.vocab_size, name="next_word_log_probs")(x)
    return init, keras.Model([token, *state, carried], [log_probs, *new_state])

"""A notebook's decoder -> the bundle's decoder_init and decoder_step Keras models.

A notebook decoder takes (image features, padded word ids) and gives the next word's scores, or
one next word per position. Where it puts the image does not matter here (Tanti et al. 2018:
init-inject, pre-inject, par-inject, merge; one or several RNN layers, or none: a Transformer):
the tool reads what the model computes, not a list of layer patterns. For a pre-padded recurrent
decoder, every tensor that depends on the image alone is computed once, in decoder_init; the
recurrent layers are stepped one word at a time with their own cells and a carried state each;
everything else runs per step, on the newest word's position (pre-padding puts it last). Stepping
is kept only where it reproduces the whole model on padded prefixes, checked numerically
(`verify_stepping`): that holds when the Embedding masks the padding, since the RNNs then skip the
pads. Otherwise (and for Transformers, post-padded words and a word per position) the decoder
re-runs the whole model on the padded prefix at every step (`whole_prefix` kind), which needs
nothing of the model but its inputs and output: exact, slower.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
from keras import layers, ops

from bundle.specs import StateSpec

RECURRENT = (layers.RNN, layers.Bidirectional)
# Stepped probabilities against the whole model on the padded prefix, in Keras. A stepped RNN cell
# and Keras' whole-sequence RNN add in different orders (2.5e-4 seen on a trained merge LSTM);
# a model that sees its padding differs by hundredths or more.
STEPPING_ATOL = 1e-3


class DecoderImportError(ValueError):
    """A decoder the tool cannot read at all; the message names the layer and the reason."""


class NotSteppable(Exception):
    """Stepping cannot reproduce this model (the whole-prefix kind serves it instead)."""


def describe_layer(layer) -> str:
    return f"layer {layer.name!r} ({type(layer).__name__})"


def _history(tensor):
    """(operation, node) that produced a symbolic tensor."""
    operation, node_index, _ = tensor._keras_history
    return operation, operation._inbound_nodes[node_index]


def _node_tensors(node) -> list:
    """A node's input tensors, without the masks Keras 3 passes on the side (`mask=`)."""
    kwargs = {k: v for k, v in node.arguments.kwargs.items() if k != "mask"}
    return [x for x in keras.tree.flatten((node.arguments.args, kwargs)) if isinstance(x, keras.KerasTensor)]


def _is_time_concatenate(layer, node) -> bool:
    if not isinstance(layer, layers.Concatenate):
        return False
    rank = len(node.outputs[0].shape)
    return rank >= 3 and layer.axis % rank == 1


@dataclass
class NotebookDecoder:
    """What the tool found in a trained notebook decoder."""

    model: keras.Model
    features: keras.KerasTensor   # the model's image-features input
    words: keras.KerasTensor      # its word-ids input
    architecture: list[str]       # where the image joins: init-inject, pre-inject, par-inject, merge
    kind: str = "step"            # or "whole_prefix"
    fallback: str | None = None   # why stepping is not used
    image_only: list[str] = field(default_factory=list)   # layers that depend on the image alone
    recurrent: list = field(default_factory=list)
    reaches: dict = field(default_factory=dict)   # id(tensor) -> indices of the model inputs it depends on
    padding: str = "pre"          # where the pads go: "pre" (pad_sequences' default) or "post"
    scores: str = "probabilities"  # what the output is: "probabilities" (a softmax) or "logits"

    @property
    def sequence_output(self) -> bool:
        """The output is (batch, length, vocabulary): one next word per position, read where the loop reads."""
        return len(self.model.outputs[0].shape) == 3

    def image_only_tensor(self, tensor) -> bool:
        return self.reaches[id(tensor)] == {self.model.inputs.index(self.features)}

    @property
    def feature_input_first(self) -> bool:
        return self.model.inputs[0] is self.features

    @property
    def feature_shape(self) -> tuple:
        return tuple(int(d) for d in self.features.shape[1:])

    @property
    def max_length(self) -> int:
        return int(self.words.shape[-1])

    @property
    def vocab_size(self) -> int:
        return int(self.model.outputs[0].shape[-1])

    @property
    def masked(self) -> bool:
        """A padding mask reaches a recurrent layer (which then skips the pads)."""
        return any(node.arguments.kwargs.get("mask") is not None
                   for layer in self.recurrent for node in layer._inbound_nodes)

    @property
    def embedding_masks(self) -> bool:
        """Some Embedding masks the padding (mask_zero=True), whether or not the mask reaches an RNN."""
        return any(isinstance(op, layers.Embedding) and op.mask_zero for op in self.model.operations)

    def describe(self) -> dict:
        """What the tool found, for the log and the manifest."""
        return {
            "architecture": "+".join(self.architecture),
            "decoder_kind": self.kind,
            **({"why_whole_prefix": self.fallback} if self.fallback else {}),
            "recurrent_layers": [f"{layer.name} ({type(layer).__name__}, {_units(layer)} units"
                                 f"{', returns sequences' if getattr(layer, 'return_sequences', False) else ''})"
                                 for layer in self.recurrent],
            "image_layers": self.image_only,
            "padding": ("pre (pad_sequences' default); id 0" if self.padding == "pre"
                        else "post (the words first); id 0"),
            "output": (f"(batch, {self.max_length}, vocabulary), read at the newest word's position"
                       if self.sequence_output else "(batch, vocabulary)") + f"; {self.scores}",
            "masking": self.masked,
            "max_length": self.max_length,
            "feature_shape": list(self.feature_shape),
            "vocab_size": self.vocab_size,
        }


def _units(layer) -> int:
    inner = layer.forward_layer if isinstance(layer, layers.Bidirectional) else layer
    return int(getattr(inner, "units", getattr(getattr(inner, "cell", None), "units", 0)))


def analyse(model, padding: str = "auto") -> NotebookDecoder:
    """Read a decoder's inputs, layers and where the image joins; DecoderImportError for a model
    that is no (image features, word ids) -> next-word model at all. `padding` is "pre", "post" or
    "auto": post for a model that gives a word per position (the loops that read `preds[0, t]`
    feed the words first), pre otherwise (pad_sequences' default)."""
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth") or not model.inputs:
        raise DecoderImportError("the model is not a functional or Sequential Keras model, so its layers "
                                 "cannot be read (import a subclassed model from its code: python -m export.from_code)")
    if len(model.inputs) != 2 or len(model.outputs) != 1:
        raise DecoderImportError(f"the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                                 "a notebook decoder takes (image features, word ids) and gives next-word "
                                 "probabilities")
    output_shape = tuple(model.outputs[0].shape)
    if len(output_shape) not in (2, 3):
        raise DecoderImportError(f"the output has shape {output_shape}; expected (batch, vocabulary), the next "
                                 "word's probabilities, or (batch, length, vocabulary), one next word per position")
    reaches = _inputs_reaching(model)
    embedded = [i for i, x in enumerate(model.inputs)
                if any(isinstance(op, layers.Embedding) and any(i in reaches[id(t)] for t in _node_tensors(node))
                       for op in model.operations for node in op._inbound_nodes)]
    if len(embedded) != 1:
        raise DecoderImportError("expected exactly one input of word ids feeding an Embedding, found "
                                 f"{len(embedded)}")
    words = model.inputs[embedded[0]]
    features = model.inputs[1 - embedded[0]]
    if len(output_shape) == 3 and output_shape[1] != words.shape[-1]:
        raise DecoderImportError(f"the output has shape {output_shape}: {output_shape[1]} positions for "
                                 f"{words.shape[-1]} words; a next word per position needs one per word")
    recurrent = [op for op in model.operations if isinstance(op, RECURRENT)]
    image_index = 1 - embedded[0]
    used = _computing_nodes(model)
    image_only = [op.name + f" ({type(op).__name__})" for op in model.operations
                  if not isinstance(op, layers.InputLayer) and any(id(n) in used for n in op._inbound_nodes)
                  and all(reaches[id(t)] == {image_index} for node in op._inbound_nodes for t in node.outputs)]
    if padding == "auto":
        padding = "post" if len(output_shape) == 3 else "pre"
    return NotebookDecoder(model=model, features=features, words=words,
                           architecture=_architecture(model, reaches, image_index, used),
                           image_only=image_only, recurrent=recurrent, reaches=reaches, padding=padding,
                           scores=_scores(model))


def _scores(model) -> str:
    """"logits" when the model ends in a layer with no softmax (a Dense left linear, as the
    Transformer notebooks train with from_logits=True), else "probabilities"."""
    layer, _ = _history(model.outputs[0])
    inner = layer.layer if isinstance(layer, layers.TimeDistributed) else layer
    if isinstance(inner, layers.Softmax) or getattr(getattr(inner, "activation", None), "__name__", "") == "softmax":
        return "probabilities"
    linear = getattr(getattr(inner, "activation", None), "__name__", "") == "linear"
    return "logits" if isinstance(inner, (layers.Dense, layers.EinsumDense)) and linear else "probabilities"


def _inputs_reaching(model) -> dict[int, set[int]]:
    """id(tensor) -> indices of the model inputs it depends on (masks on the side not counted)."""
    reaches = {id(x): {i} for i, x in enumerate(model.inputs)}

    def visit(tensor) -> set[int]:
        if id(tensor) not in reaches:
            _, node = _history(tensor)
            found = set().union(*[visit(t) for t in _node_tensors(node)]) if _node_tensors(node) else set()
            for out in node.outputs:
                reaches[id(out)] = found
        return reaches[id(tensor)]

    for op in model.operations:
        for node in op._inbound_nodes:
            for out in node.outputs:
                visit(out)
    return reaches


def _computing_nodes(model) -> set[int]:
    """ids of the nodes the output is computed from; the nodes that only compute masks (Keras'
    not_equal and the mask arithmetic of a Concatenate) are left out."""
    found, pending = set(), list(model.outputs)
    while pending:
        tensor = pending.pop()
        _, node = _history(tensor)
        if id(node) not in found:
            found.add(id(node))
            pending.extend(_node_tensors(node))
    return found


def _architecture(model, reaches: dict, image_index: int, used: set[int]) -> list[str]:
    """Where the image joins the words (Tanti et al.'s names), in the order the model does it."""
    after_rnn: set[int] = set()   # ids of tensors computed from a recurrent layer's last output
    found = []

    def note(name):
        if name not in found:
            found.append(name)

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            op = node.operation
            if op is None or isinstance(op, layers.InputLayer) or id(node) not in used:
                continue
            inputs = _node_tensors(node)
            image = [t for t in inputs if reaches[id(t)] == {image_index}]
            wordy = [t for t in inputs if reaches[id(t)] != {image_index} and reaches[id(t)]]
            if any(id(t) in after_rnn for t in wordy) or (
                    isinstance(op, RECURRENT) and not getattr(op, "return_sequences", False)):
                after_rnn.update(id(t) for t in node.outputs)
            if not image or not wordy:
                continue
            if isinstance(op, RECURRENT):
                note("init-inject")
            elif any(id(t) in after_rnn for t in wordy):
                note("merge")
            elif _is_time_concatenate(op, node):
                note("pre-inject")
            else:
                note("par-inject")
    return found or ["unknown"]


# --- Stepping ---------------------------------------------------------------------------------

@dataclass
class _Static:          # depends on the image alone: computed in decoder_init
    tensor: keras.KerasTensor


@dataclass
class _Seq:             # one value per word position; `step` is the newest position's [batch, 1, ...]
    step: object
    length: int         # the position axis' length in the whole model


@dataclass
class _Vec:             # one value per caption that depends on the words (after the last RNN)
    value: object


@dataclass
class _Recurrent:
    node: object
    inputs: list        # the step graph's state inputs
    outputs: list       # their next values


class _StepBuilder:
    """Interprets the model's graph twice: once for one step (inputs: the newest word, each RNN's
    state, the image-only tensors the step reads), once for decoder_init (those image-only tensors
    and each RNN's state after the positions before the words: pre-inject)."""

    def __init__(self, decoder: NotebookDecoder):
        self.decoder = decoder
        self.values: dict[int, object] = {}
        self.contexts: dict[tuple, tuple] = {}     # (id, form) -> (tensor, form, step input)
        self.recurrent: list[_Recurrent] = []

    def static(self, tensor) -> bool:
        return self.decoder.image_only_tensor(tensor)

    # Step graph.
    def step_value(self, tensor):
        if id(tensor) in self.values:
            return self.values[id(tensor)]
        if self.static(tensor):
            value = _Static(tensor)
        elif tensor is self.decoder.words:
            value = _Seq(ops.cast(self.token, tensor.dtype), self.decoder.max_length)
        else:
            _, node = _history(tensor)
            for out, v in zip(node.outputs, self.step_node(node)):
                self.values[id(out)] = v
            return self.values[id(tensor)]
        self.values[id(tensor)] = value
        return value

    def context(self, tensor, form: str):
        key = (id(tensor), form)
        if key not in self.contexts:
            shape = tuple(tensor.shape[1:]) if form == "whole" else (1, *tensor.shape[2:])
            if any(d is None for d in shape):
                raise NotSteppable(f"the image-only tensor {tensor.name} has no fixed shape {shape}")
            self.contexts[key] = (tensor, form, keras.Input(shape, dtype=tensor.dtype))
        return self.contexts[key][2]

    def step_node(self, node) -> list:
        layer = node.operation
        args = node.arguments.args
        kwargs = {k: v for k, v in node.arguments.kwargs.items() if k not in ("mask", "training")}
        if isinstance(layer, layers.RNN):
            return self.step_recurrent(node, args, kwargs)
        values = keras.tree.map_structure(lambda x: self.step_value(x) if isinstance(x, keras.KerasTensor) else x,
                                          (args, kwargs))
        flat = keras.tree.flatten(values)
        seqs = [v for v in flat if isinstance(v, _Seq)]
        if _is_time_concatenate(layer, node):
            if not seqs or not isinstance(flat[-1], _Seq) or len(seqs) > 1:
                raise NotSteppable(f"{describe_layer(layer)} joins positions after the words")
            return [_Seq(flat[-1].step, int(node.outputs[0].shape[1]))]
        if seqs and any(isinstance(v, _Vec) for v in flat):
            raise NotSteppable(f"{describe_layer(layer)} mixes word positions with a whole-caption value")
        length = seqs[0].length if seqs else None

        def resolve(v):
            if isinstance(v, _Static):
                aligned = length is not None and len(v.tensor.shape) >= 3 and v.tensor.shape[1] == length
                return self.context(v.tensor, "last" if aligned else "whole")
            if isinstance(v, _Seq):
                return v.step
            return v.value if isinstance(v, _Vec) else v

        call_args, call_kwargs = keras.tree.map_structure(resolve, values)
        outputs = keras.tree.flatten(layer(*call_args, **call_kwargs))
        if seqs:
            for before, after in zip(node.outputs, outputs):
                if len(before.shape) != len(after.shape) or len(before.shape) < 3 or before.shape[1] != length:
                    raise NotSteppable(f"{describe_layer(layer)} does not keep the word positions apart")
            return [_Seq(out, length) for out in outputs]
        return [_Vec(out) for out in outputs]

    def step_recurrent(self, node, args, kwargs) -> list:
        layer = node.operation
        if layer.go_backwards or layer.stateful:
            raise NotSteppable(f"{describe_layer(layer)} runs backwards or is stateful")
        sequence = self.step_value(args[0])
        if not isinstance(sequence, _Seq):
            raise NotSteppable(f"{describe_layer(layer)} does not read the word sequence")
        initial = kwargs.get("initial_state", args[1] if len(args) > 1 else None)
        if initial is not None and not all(self.static(t) for t in keras.tree.flatten(initial)):
            raise NotSteppable(f"{describe_layer(layer)} starts from a state that depends on the words")
        sizes = [int(s) for s in layer.state_size]
        state = [keras.Input((size,)) for size in sizes]
        output, new = CellStep(layer.cell)(ops.squeeze(sequence.step, axis=1), state)
        self.recurrent.append(_Recurrent(node, state, new))
        first = _Seq(ops.expand_dims(output, 1), sequence.length) if layer.return_sequences else _Vec(output)
        return [first, *[_Vec(s) for s in new]] if layer.return_state else [first]

    # decoder_init graph.
    def init_value(self, tensor, memo: dict):
        """The init graph's value of an image-only tensor, or the positions before the words of a
        word-dependent sequence (None when there are none)."""
        if id(tensor) in memo:
            return memo[id(tensor)]
        if tensor is self.decoder.features:
            return self.features
        if tensor is self.decoder.words:
            return None
        layer, node = _history(tensor)
        args = node.arguments.args
        kwargs = {k: v for k, v in node.arguments.kwargs.items() if k not in ("mask", "training")}
        if isinstance(layer, layers.RNN) and not self.static(tensor):
            outputs = self.init_recurrent(node, args, kwargs, memo)
        elif _is_time_concatenate(layer, node) and not self.static(tensor):
            parts = [self.init_value(t, memo) for t in keras.tree.flatten(args)]
            parts = [p for p in parts if p is not None]
            outputs = [ops.concatenate(parts, axis=1) if len(parts) > 1 else (parts[0] if parts else None)]
        else:
            values = keras.tree.map_structure(
                lambda x: self.init_value(x, memo) if isinstance(x, keras.KerasTensor) else x, (args, kwargs))
            if not self.static(tensor):
                if any(v is None for v in keras.tree.flatten(values)):
                    outputs = [None] * len(node.outputs)   # no positions before the words
                else:
                    raise NotSteppable(f"{describe_layer(layer)} mixes the image with positions before the words")
            else:
                outputs = keras.tree.flatten(layer(*values[0], **values[1]))
        for out, value in zip(node.outputs, outputs):
            memo[id(out)] = value
        return memo[id(tensor)]

    def init_recurrent(self, node, args, kwargs, memo) -> list:
        layer = node.operation
        initial = kwargs.get("initial_state", args[1] if len(args) > 1 else None)
        if initial is not None:
            state = [self.init_value(t, memo) for t in keras.tree.flatten(initial)]
        else:
            state = [ZeroState(int(size))(self.features) for size in layer.state_size]
        before = self.init_value(args[0], memo)
        outputs = []
        for position in range(0 if before is None else int(before.shape[1])):
            output, state = CellStep(layer.cell)(before[:, position], state)
            outputs.append(output)
        self.initial_states[id(node)] = state
        sequence = ops.stack(outputs, axis=1) if outputs and layer.return_sequences else None
        return [sequence] + [None] * (len(node.outputs) - 1)

    def build(self) -> tuple[keras.Model, keras.Model, list[StateSpec]]:
        decoder = self.decoder
        self.token = keras.Input((1,), dtype="int32", name="token")
        output_layer, output_node = _history(decoder.model.outputs[0])
        result = self.step_value(decoder.model.outputs[0])
        if not isinstance(result, _Vec):
            raise NotSteppable("the output does not depend on the words")
        log_probs = _log_probs(output_layer, output_node, self, decoder.vocab_size, result.value)

        self.features = keras.Input(decoder.feature_shape, name="features")
        self.initial_states: dict[int, list] = {}
        memo: dict = {}
        for recurrent in self.recurrent:
            if id(recurrent.node) not in self.initial_states:
                for out in recurrent.node.outputs:
                    self.init_value(out, memo)
        contexts = []
        for tensor, form, _ in self.contexts.values():
            value = self.init_value(tensor, memo)
            contexts.append(value[:, -1:] if form == "last" else value)

        specs, init_outputs, step_inputs, step_outputs = [], [], [], []
        for number, recurrent in enumerate(self.recurrent, start=1):
            suffix = "" if number == 1 else str(number)
            count = len(recurrent.inputs)
            names = {1: ["h"], 2: ["h", "c"]}.get(count, [f"s{i}" for i in range(count)])
            for name, state_input, new, initial in zip(names, recurrent.inputs, recurrent.outputs,
                                                      self.initial_states[id(recurrent.node)]):
                specs.append(StateSpec(name + suffix, "float32", tuple(int(d) for d in state_input.shape[1:]), True))
                init_outputs.append(initial)
                step_inputs.append(state_input)
                step_outputs.append(new)
        for number, ((tensor, form, step_input), value) in enumerate(zip(self.contexts.values(), contexts), start=1):
            specs.append(StateSpec("context" + ("" if number == 1 else str(number)), str(tensor.dtype),
                                   tuple(int(d) for d in step_input.shape[1:]), False))
            init_outputs.append(value)
            step_inputs.append(step_input)
        init_outputs = _distinct(init_outputs)
        init = keras.Model(self.features, init_outputs)
        step = keras.Model([self.token, *step_inputs], [log_probs, *step_outputs])
        return init, step, specs


def _distinct(tensors: list) -> list:
    """Each output its own tensor: a graph output listed twice would get one ONNX name."""
    seen, out = set(), []
    for t in tensors:
        out.append(layers.Identity()(t) if id(t) in seen else t)
        seen.add(id(t))
    return out


def _log_probs(layer, node, builder: _StepBuilder, vocab_size: int, probs):
    """The next word's log-probabilities: log_softmax of the logits when the model ends in a softmax
    (for precision), else the log of its output; id 0, padding, is never chosen."""
    activation = getattr(getattr(layer, "activation", None), "__name__", None)
    if isinstance(layer, (layers.Dense, layers.Activation, layers.Softmax)) and (
            isinstance(layer, layers.Softmax) or activation == "softmax"):
        inner = builder.values.get(id(_node_tensors(node)[0]))
        if isinstance(inner, _Vec):
            return NextWordLogProbs(layer if isinstance(layer, layers.Dense) else None, vocab_size)(inner.value)
    return LogOfProbabilities(vocab_size)(probs)


class CellStep(layers.Layer):
    """One step of a recurrent layer's own cell: (input, [state]) -> (output, [new state]). A layer
    of its own, so that two RNNs' cells (both called "lstm_cell" by Keras) can sit in one model."""

    def __init__(self, cell, **kwargs):
        super().__init__(**kwargs)
        self.cell = cell

    def call(self, x, states):
        output, new = self.cell(x, list(states))
        return output, list(new) if isinstance(new, (list, tuple)) else [new]


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
    """log_softmax of a softmax layer's logits (the Dense's own matmul when it is a softmax Dense)."""

    def __init__(self, dense, vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        self.dense, self.vocab_size = dense, vocab_size

    def call(self, x):
        if self.dense is not None:
            x = ops.matmul(x, self.dense.kernel)
            if self.dense.use_bias:
                x = x + self.dense.bias
        return ops.log_softmax(x, axis=-1) + padding_penalty(self.vocab_size)


class LogOfProbabilities(layers.Layer):
    """The log of a model's output probabilities, with padding never chosen."""

    def __init__(self, vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size

    def call(self, p):
        return ops.log(ops.maximum(p, 1e-30)) + padding_penalty(self.vocab_size)


def padding_penalty(vocab_size: int) -> np.ndarray:
    """Added to log-probabilities: id 0, padding, is never chosen."""
    penalty = np.zeros(vocab_size, np.float32)
    penalty[0] = -1e9
    return penalty


def next_prefix(prefix, token, padding: str):
    """The padded prefix [batch, length] with `token` [batch, 1] added as the notebook's loop adds it,
    and the newest word's position [batch, 1] (keras.ops, so Keras layers and TensorFlow functions
    share it). Pre-padded, the oldest id drops out (pad_sequences keeps the last max_length) and the
    newest word is last; post-padded, the word goes to the first pad, and a full prefix slides on."""
    length = prefix.shape[1]
    token = ops.cast(token, prefix.dtype)
    shifted = ops.concatenate([prefix[:, 1:], token], axis=1)
    if padding == "pre":
        return shifted, ops.full((ops.shape(prefix)[0], 1), length - 1, "int32")
    # Pads are 0 and no word is (the bundle never predicts 0), so the words so far are the non-zero ids.
    count = ops.sum(ops.cast(ops.not_equal(prefix, 0), "int32"), axis=1, keepdims=True)
    placed = ops.where(ops.equal(ops.arange(length, dtype="int32")[None, :], count), token, prefix)
    return ops.where(count >= length, shifted, placed), ops.minimum(count, length - 1)


def pad_prefixes(prefixes, length: int, padding: str) -> tuple[np.ndarray, np.ndarray]:
    """Word-id prefixes as the notebook's loop feeds them (each kept to its last `length` ids, the
    pads before or after them) and each one's newest word's position."""
    padded = np.zeros((len(prefixes), length), np.float32)
    positions = np.empty(len(prefixes), int)
    for row, prefix in enumerate(prefixes):
        kept = list(prefix)[-length:]
        if padding == "pre":
            padded[row, length - len(kept):], positions[row] = kept, length - 1
        else:
            padded[row, :len(kept)], positions[row] = kept, len(kept) - 1
    return padded, positions


def next_word_probabilities(out, positions: np.ndarray, scores: str) -> np.ndarray:
    """A model's output as next-word probabilities (a copy): read at each row's newest position for a
    model that gives a word per position, a softmax for one that gives logits."""
    out = np.array(out)
    if out.ndim == 3:
        out = out[np.arange(len(out)), positions]
    if scores == "logits":
        out = np.exp(out - out.max(-1, keepdims=True))
        out /= out.sum(-1, keepdims=True)
    return out


class WholePrefixStep(layers.Layer):
    """One step of the notebooks' loop: the word joins the padded prefix (`next_prefix`) and the
    whole model runs on it, read at the newest word's position for a model that gives a word per
    position."""

    def __init__(self, model: keras.Model, features_first: bool, vocab_size: int, padding: str = "pre",
                 scores: str = "probabilities", **kwargs):
        super().__init__(**kwargs)
        self.model, self.features_first, self.vocab_size = model, features_first, vocab_size
        self.padding, self.scores = padding, scores

    def call(self, token, prefix, context):
        prefix_next, position = next_prefix(prefix, token, self.padding)
        words = ops.cast(prefix_next, self.model.inputs[1 if self.features_first else 0].dtype)
        out = self.model([context, words] if self.features_first else [words, context])
        if len(out.shape) == 3:
            out = ops.take_along_axis(out, ops.expand_dims(position, -1), axis=1)[:, 0]
        log_probs = (ops.log_softmax(out, axis=-1) if self.scores == "logits"
                     else ops.log(ops.maximum(out, 1e-30)))
        return log_probs + padding_penalty(self.vocab_size), prefix_next


def whole_prefix_models(decoder: NotebookDecoder) -> tuple[keras.Model, keras.Model, list[StateSpec]]:
    """decoder_init and decoder_step that run the whole model on the padded prefix at every step."""
    features = keras.Input(decoder.feature_shape, name="features")
    # The image goes in raw: the whole model (image branch included) runs at every step.
    init = keras.Model(features, [PrefixStart(decoder.max_length, name="prefix_start")(features),
                                  layers.Identity(name="image_features")(features)])
    token = keras.Input((1,), dtype="int32", name="token")
    prefix = keras.Input((decoder.max_length,), dtype="int32", name="prefix")
    context = keras.Input(decoder.feature_shape, name="context")
    step = WholePrefixStep(decoder.model, decoder.feature_input_first, decoder.vocab_size, decoder.padding,
                           decoder.scores, name="whole_prefix")
    specs = [StateSpec("prefix", "int32", (decoder.max_length,), True),
             StateSpec("context", "float32", decoder.feature_shape, False)]
    return init, keras.Model([token, prefix, context], list(step(token, prefix, context))), specs


def stepped_models(decoder: NotebookDecoder) -> tuple[keras.Model, keras.Model, list[StateSpec]]:
    """decoder_init and decoder_step that step each recurrent layer; NotSteppable names what stops it."""
    try:
        return _StepBuilder(decoder).build()
    except NotSteppable:
        raise
    except Exception as exc:  # a layer that cannot run on one position raises whatever it raises
        raise NotSteppable(f"a layer cannot run one word position at a time ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200]})") from None


def keras_decode_steps(init: keras.Model, step: keras.Model, features: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
    """Next-word probabilities after each word of `prefixes` [batch, words], stepping in Keras."""
    state = [np.asarray(s) for s in keras.tree.flatten(init(features, training=False))]
    updated = len(step.outputs) - 1
    out = []
    for position in range(prefixes.shape[1]):
        log_probs, *new = step([prefixes[:, position:position + 1], *state], training=False)
        state = [np.asarray(s) for s in new] + state[updated:]
        out.append(np.exp(np.asarray(log_probs)))
    return np.stack(out, axis=1)


def whole_model_steps(decoder: NotebookDecoder, features: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
    """The same probabilities from the whole model on each padded prefix (the notebook's way), read
    at the newest word's position for a model that gives a word per position."""
    out = []
    for position in range(prefixes.shape[1]):
        padded, positions = pad_prefixes(prefixes[:, :position + 1], decoder.max_length, decoder.padding)
        inputs = [features, padded] if decoder.feature_input_first else [padded, features]
        probs = next_word_probabilities(decoder.model(inputs, training=False), positions, decoder.scores)
        probs[:, 0] = 0.0   # padding is never a word (the bundle's step gives it no probability)
        out.append(probs)
    return np.stack(out, axis=1)


def verify_stepping(decoder: NotebookDecoder, init, step, features: np.ndarray, start: int,
                    seed: int = 0) -> float:
    """Largest |stepped - whole-model| next-word probability over random captions of every length
    up to max_length, starting with the start word, on `features`."""
    rng = np.random.default_rng(seed)
    rows = min(len(features), 8)
    prefixes = rng.integers(1, decoder.vocab_size, size=(rows, decoder.max_length)).astype(np.int32)
    prefixes[:, 0] = start
    stepped = keras_decode_steps(init, step, features[:rows], prefixes)
    stepped[:, :, 0] = 0.0
    return float(np.abs(stepped - whole_model_steps(decoder, features[:rows], prefixes)).max())


def decoder_models(decoder: NotebookDecoder, features: np.ndarray, start: int,
                   log=print) -> tuple[keras.Model, keras.Model, list[StateSpec]]:
    """Stepped graphs where they reproduce the model, else the whole-prefix ones; sets decoder.kind
    and decoder.fallback to say which and why."""
    reason = ("the model gives a next word per position" if decoder.sequence_output else
              "post-padded words" if decoder.padding == "post" else
              None if decoder.recurrent else
              "no recurrent layer: every position attends to the others (a Transformer)")
    if reason:
        decoder.kind, decoder.fallback = "whole_prefix", reason
        log(f"{reason}: each step runs the whole model on the padded prefix (exact)")
        return whole_prefix_models(decoder)
    try:
        init, step, specs = stepped_models(decoder)
        worst = verify_stepping(decoder, init, step, features, start)
        if worst > STEPPING_ATOL:
            hint = ("" if decoder.masked else
                    " (the Embedding masks the padding, but the mask does not reach the RNN, so it reads the "
                    "pads: Keras 3 passes no mask to an RNN given initial_state, and drops it at a Concatenate "
                    "with an unmasked input)" if decoder.embedding_masks else
                    " (the Embedding does not mask the padding, so the RNN reads the pads)")
            raise NotSteppable(f"stepping differs from the whole model on padded prefixes by up to {worst:.2e}{hint}")
        decoder.kind, decoder.fallback = "step", None
        log(f"stepping reproduces the whole model on padded prefixes: max |probability diff| {worst:.1e}")
        return init, step, specs
    except NotSteppable as exc:
        decoder.kind, decoder.fallback = "whole_prefix", str(exc)
        log(f"{exc}: each step re-runs the whole model on the padded prefix (exact, and slower than stepping)")
        return whole_prefix_models(decoder)

"""The adapters from bundle.json's graphs to decoding: names come from the manifest, and the state
follows the contract's rule (updated as <key>_next, or carried unchanged)."""
import numpy as np
import pytest

from bundle.decoding import decode_beam, decode_greedy
from bundle.sessions import DecoderState, SessionDecoder, SessionEncoder

END, VOCAB = 2, 6


def entry(key, name):
    return {"key": key, "name": name, "dtype": "float32", "shape": ["batch", 1]}


GRAPHS = {  # every tensor named differently from its key, as another exporter might
    "encoder": {"inputs": [entry("image", "pixels")], "outputs": [entry("features", "pooled")]},
    "decoder_init": {"inputs": [entry("features", "f")], "outputs": [entry("h", "h0"), entry("context", "ctx0")]},
    "decoder_step": {"inputs": [entry("token", "word"), entry("h", "h_in"), entry("context", "ctx_in")],
                     "outputs": [entry("log_probs", "scores"), entry("h_next", "h_out")]},
}


class FakeSession:
    """Records the names it is called with; h counts steps, and the word is <end> once h reaches 3."""

    def __init__(self, function):
        self.function, self.calls = function, []

    def run(self, outputs, feeds):
        self.calls.append((list(outputs), sorted(feeds)))
        return self.function(outputs, feeds)


def init(outputs, feeds):
    n = len(feeds["f"])
    return [np.zeros((n, 1), np.float32), feeds["f"] * 10]


def step(outputs, feeds):
    h = feeds["h_in"] + 1
    scores = np.full((len(h), VOCAB), -5.0, np.float32)
    scores[:, 4] = -1.0
    scores[h[:, 0] >= 3, END] = 0.0
    return [np.log(np.exp(scores) / np.exp(scores).sum(1, keepdims=True)), h]


def test_names_come_from_the_manifest_and_context_is_carried():
    init_session, step_session = FakeSession(init), FakeSession(step)
    decoder = SessionDecoder(init_session, step_session, GRAPHS)
    features = np.array([[1.0], [2.0]], np.float32)
    state = decoder.initial_state(features)
    assert init_session.calls == [(["h0", "ctx0"], ["f"])]
    hypotheses = decode_greedy(decoder.step, state, 2, 1, END, 10)
    assert [h.tokens for h in hypotheses] == [[4, 4], [4, 4]]
    assert step_session.calls[0] == (["scores", "h_out"], ["ctx_in", "h_in", "word"])
    _, (h, context) = decoder.step(np.ones((2, 1), np.int32), state)
    assert h.tolist() == [[1.0], [1.0]] and context.tolist() == [[10.0], [20.0]]  # carried as it was


def test_beam_search_reorders_every_state_tensor():
    decoder = SessionDecoder(FakeSession(init), FakeSession(step), GRAPHS)
    features = np.array([[1.0]], np.float32)
    beams = decode_beam(decoder.step, decoder.initial_state(features), 1, 1, END, 10, beam_size=3)
    assert beams[0][0].tokens == [4, 4]


def test_encoder_uses_the_manifests_names():
    session = FakeSession(lambda outputs, feeds: [feeds["pixels"].mean(axis=(1, 2, 3))[:, None]])
    assert SessionEncoder(session, GRAPHS)(np.ones((2, 4, 4, 3), np.float32)).shape == (2, 1)
    assert session.calls == [(["pooled"], ["pixels"])]


def test_a_step_that_does_not_take_the_initial_state_is_refused():
    graphs = {**GRAPHS, "decoder_step": {**GRAPHS["decoder_step"], "inputs": GRAPHS["decoder_step"]["inputs"][:2]}}
    with pytest.raises(ValueError, match="decoder_step takes no context"):
        DecoderState(graphs)

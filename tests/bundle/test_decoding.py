"""Greedy and beam search against brute force, over a toy step: a hand-written table of
next-word probabilities that depends on the position and the previous word."""
import itertools
import math

import numpy as np
import pytest

from bundle.decoding import decode_beam, decode_greedy

START, END = 0, 1
VOCAB = 5  # 0 <start>, 1 <end>, 2..4 words


def toy_table(seed: int) -> np.ndarray:
    """log P(word | position, previous word), [positions, VOCAB, VOCAB]; <start> never follows."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(6, VOCAB, VOCAB))
    logits[:, :, START] = -np.inf
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def toy_step(table):
    def step(tokens, state):
        (position,) = state
        log_probs = table[position[:, 0], tokens[:, 0]]
        return log_probs, (position + 1,)
    return step


def start_state(batch):
    return (np.zeros((batch, 1), dtype=np.int64),)


def sequence_log_prob(table, words, ended):
    tokens = [START] + list(words) + ([END] if ended else [])
    return sum(table[t, tokens[t], tokens[t + 1]] for t in range(len(tokens) - 1))


def reference_beam(table, beam_size, max_length, length_penalty):
    """Beam search written the slow, obvious way: score every extension of every beam, sort all."""
    def norm(log_prob, length):
        return log_prob / length ** length_penalty if length_penalty else log_prob

    live = [((), 0.0)]
    finished = []
    for t in range(1, max_length + 1):
        candidates = sorted(((words + (w,), score + table[t - 1, words[-1] if words else START, w])
                             for words, score in live for w in range(VOCAB)), key=lambda c: -c[1])
        live = []
        for words, score in candidates:
            if len(live) == beam_size or score == -math.inf:
                break
            if words[-1] == END:
                finished.append((list(words[:-1]), score, norm(score, t)))
            else:
                live.append((words, score))
        if length_penalty == 0 and len(finished) >= beam_size and \
                max(s for _, s in live) <= sorted(f[2] for f in finished)[-beam_size]:
            break
    else:
        finished += [(list(words), score, norm(score, max_length)) for words, score in live]
    return sorted(finished, key=lambda f: -f[2])[:beam_size]


def exhaustive_best(table, max_length, length_penalty, no_repeat_ngram_size=0):
    """The best of all sequences: w1..wn <end> for n < max_length, and w1..w_max without <end>;
    with no_repeat_ngram_size n, only those in which no n-gram (<start> and <end> included) occurs twice."""
    best = None
    for length in range(max_length + 1):
        for words in itertools.product(range(2, VOCAB), repeat=length):
            ended = length < max_length
            if repeats_an_ngram([START, *words, *([END] if ended else [])], no_repeat_ngram_size):
                continue
            log_prob = sequence_log_prob(table, words, ended)
            size = length + ended
            score = log_prob / size ** length_penalty if length_penalty else log_prob
            if best is None or score > best[1]:
                best = (list(words), score)
    return best


def repeats_an_ngram(tokens, n):
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return n > 0 and len(grams) != len(set(grams))


@pytest.mark.parametrize("beam_size", [1, 2, 3, 4])
@pytest.mark.parametrize("max_length", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_matches_reference(beam_size, max_length, length_penalty, seed):
    table = toy_table(seed)
    [got] = decode_beam(toy_step(table), start_state(1), 1, START, END, max_length, beam_size, length_penalty)
    want = reference_beam(table, beam_size, max_length, length_penalty)
    assert [h.tokens for h in got] == [w[0] for w in want]
    assert [h.score for h in got] == pytest.approx([w[2] for w in want])
    for h in got:  # the reported log-probability is the sequence's true total, with or without <end>
        assert any(h.log_prob == pytest.approx(sequence_log_prob(table, h.tokens, ended)) for ended in (True, False))


@pytest.mark.parametrize("max_length", [1, 2, 3])
@pytest.mark.parametrize("length_penalty", [0.0, 0.7, 1.0])
def test_wide_beam_finds_the_exhaustive_best(max_length, length_penalty):
    table = toy_table(7)
    width = (VOCAB - 1) ** max_length + 1  # wide enough to keep every sequence alive
    [got] = decode_beam(toy_step(table), start_state(1), 1, START, END, max_length, width, length_penalty)
    words, score = exhaustive_best(table, max_length, length_penalty)
    assert got[0].tokens == words
    assert got[0].score == pytest.approx(score)


def test_beam_beats_greedy_where_greedy_is_short_sighted():
    # Greedy takes word 2 first (0.6), but every continuation after it is poor;
    # word 3 (0.4) leads to <end> with certainty, so beam search prefers [3].
    p = np.full((6, VOCAB, VOCAB), 1e-9)
    p[0, START, 2], p[0, START, 3] = 0.6, 0.4
    p[1, 2, 2], p[1, 2, 3], p[1, 2, 4], p[1, 2, END] = 0.25, 0.25, 0.25, 0.25
    p[1, 3, END] = 1.0
    p[2:, :, END] = 1.0
    table = np.log(p / p.sum(-1, keepdims=True))
    [greedy] = decode_greedy(toy_step(table), start_state(1), 1, START, END, 4)
    [beam] = decode_beam(toy_step(table), start_state(1), 1, START, END, 4, beam_size=2, length_penalty=0.0)
    assert greedy.tokens[0] == 2
    assert beam[0].tokens == [3]
    assert beam[0].log_prob > greedy.log_prob


@pytest.mark.parametrize("seed", range(5))
def test_greedy_equals_beam_of_one_and_handles_a_batch(seed):
    tables = [toy_table(seed), toy_table(seed + 100)]
    # A batch of two "images": the table is picked by the state's image index.
    def step(tokens, state):
        position, image = state
        log_probs = np.stack([tables[i][p, t] for i, p, t in zip(image[:, 0], position[:, 0], tokens[:, 0])])
        return log_probs, (position + 1, image)
    state = (np.zeros((2, 1), dtype=np.int64), np.array([[0], [1]]))
    greedy = decode_greedy(step, state, 2, START, END, 5)
    beam = decode_beam(step, state, 2, START, END, 5, beam_size=1, length_penalty=0.0)
    for i in range(2):
        assert greedy[i].tokens == beam[i][0].tokens
        assert greedy[i].log_prob == pytest.approx(beam[i][0].log_prob)
        [alone] = decode_beam(toy_step(tables[i]), start_state(1), 1, START, END, 5, beam_size=3)
        assert [h.tokens for h in decode_beam(step, state, 2, START, END, 5, beam_size=3)[i]] == [h.tokens for h in alone]


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("max_length", [2, 3, 4])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beam_without_repeated_ngrams_finds_the_exhaustive_best(n, max_length, length_penalty):
    table = toy_table(11)
    width = (VOCAB - 1) ** max_length + 1
    [got] = decode_beam(toy_step(table), start_state(1), 1, START, END, max_length, width, length_penalty,
                        no_repeat_ngram_size=n)
    words, score = exhaustive_best(table, max_length, length_penalty, n)
    assert got[0].tokens == words and got[0].score == pytest.approx(score)
    assert not any(repeats_an_ngram([START, *h.tokens], n) for h in got)


def degenerate_table():
    """A model that, once it says word 2, says it again forever (\"the small small small ...\")."""
    p = np.full((8, VOCAB, VOCAB), 1e-3)
    p[:, :, START] = 0
    p[:, START, 2] = 1.0
    p[:, 2, 2] = 1.0
    p[:, 2, 3] = 0.3
    p[:, 3, END] = 1.0
    p[:, 4, END] = 1.0
    with np.errstate(divide="ignore"):  # <start> never follows: log 0
        return np.log(p / p.sum(-1, keepdims=True))


@pytest.mark.parametrize("n", [1, 2])
def test_no_repeat_ngram_stops_a_degenerate_loop(n):
    table = degenerate_table()
    [plain] = decode_greedy(toy_step(table), start_state(1), 1, START, END, 7)
    assert plain.tokens == [2] * 7
    [blocked] = decode_greedy(toy_step(table), start_state(1), 1, START, END, 7, no_repeat_ngram_size=n)
    assert not repeats_an_ngram([START, *blocked.tokens], n)
    assert blocked.tokens == ([2, 3] if n == 1 else [2, 2, 3])
    [beam_of_one] = decode_beam(toy_step(table), start_state(1), 1, START, END, 7, 1, 0.0, no_repeat_ngram_size=n)
    assert beam_of_one[0].tokens == blocked.tokens
    # The reported log-probability is the model's, not the one after banning.
    assert blocked.log_prob == pytest.approx(sequence_log_prob(table, blocked.tokens, True))


def test_repeating_tokens_are_those_hugging_face_bans():
    from bundle.decoding import repeating_tokens

    assert repeating_tokens([0, 5, 6, 5], 2) == [6]        # "5 6" seen: after 5, 6 would repeat it
    assert repeating_tokens([0, 5, 6, 5, 6], 3) == [5]     # "5 6 5" seen: after "5 6", 5 would repeat it
    assert sorted(repeating_tokens([0, 5, 6], 1)) == [0, 5, 6]
    assert repeating_tokens([0, 5], 3) == [] and repeating_tokens([0, 5, 6, 5], 0) == []


def attending_step(table):
    """toy_step that also 'attends': one-hot at (position, previous word), so each word's row says
    which step, after which prefix, produced it."""
    plain = toy_step(table)

    def step(tokens, state):
        (position,) = state
        weights = np.zeros((len(tokens), 6 * VOCAB), np.float32)
        weights[np.arange(len(tokens)), position[:, 0] * VOCAB + tokens[:, 0]] = 1.0
        log_probs, state = plain(tokens, state)
        return log_probs, state, weights

    return step


def expected_rows(tokens):
    previous = [START, *tokens[:-1]]
    return [t * VOCAB + p for t, p in enumerate(previous)]


@pytest.mark.parametrize("seed", range(6))
def test_each_word_keeps_the_attention_of_the_step_that_chose_it(seed):
    table = toy_table(seed)
    greedy = decode_greedy(attending_step(table), start_state(3), 3, START, END, 5, attention=True)
    plain = decode_greedy(toy_step(table), start_state(3), 3, START, END, 5)
    assert [h.tokens for h in greedy] == [h.tokens for h in plain]
    for h in greedy:
        assert h.attention.shape == (len(h.tokens), 6 * VOCAB)
        assert h.attention.argmax(1).tolist() == expected_rows(h.tokens)
    beams = decode_beam(attending_step(table), start_state(2), 2, START, END, 5, beam_size=3, attention=True)
    plain_beams = decode_beam(toy_step(table), start_state(2), 2, START, END, 5, beam_size=3)
    assert [[h.tokens for h in b] for b in beams] == [[h.tokens for h in b] for b in plain_beams]
    for hypotheses in beams:
        for h in hypotheses:  # beams reorder at every step: each keeps its own rows
            assert h.attention.shape == (len(h.tokens), 6 * VOCAB)
            assert h.attention.argmax(1).tolist() == expected_rows(h.tokens)
    assert all(h.attention is None for h in plain)

"""Greedy and beam-search decoding in plain numpy over a step function.

The model is reached only through
    step(tokens: int32 [N, 1], state: tuple of arrays [N, ...]) -> (log_probs float [N, V], state)
where N is images x beams, so every beam of every image goes through one step call. Beam search
also reorders the state rows with `select(state, rows)`; the default indexes numpy arrays, and a
runtime that keeps the state on a GPU passes its own. With `attention`, the step also returns
what it attended to, [N, positions], and each hypothesis keeps its own row for every word.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# What the server ranks finished beams by unless CAPTION_LENGTH_PENALTY says otherwise: log_prob
# per generated token, so that short captions do not win just by having fewer terms to add up.
# The engine, the micro-batcher, the warm-up and the benchmarks all use it.
DEFAULT_LENGTH_PENALTY = 1.0


def words_of(tokens, words: list[str], special_ids) -> list[str]:
    """A caption's words: special tokens (<start>, <end>, padding, <unk>) are never words."""
    special = {int(i) for i in special_ids}
    return [words[int(t)] for t in tokens if int(t) not in special]


@dataclass
class Hypothesis:
    """One decoded caption: token ids (without <start>/<end>), total log-probability, and the
    score it was ranked by (log_prob / length ** length_penalty)."""

    tokens: list[int]
    log_prob: float
    score: float
    attention: np.ndarray | None = None  # [len(tokens), positions]: where the step producing each word looked


def repeating_tokens(history, n: int) -> list[int]:
    """The tokens that would repeat an n-gram already in `history` (the sequence so far, <start>
    included), as Hugging Face's no_repeat_ngram_size bans them; none when n is 0."""
    if n <= 0 or len(history) + 1 < n:
        return []
    history = list(history)
    prefix = history[len(history) - n + 1:] if n > 1 else []
    return [history[i + n - 1] for i in range(len(history) - n + 1) if history[i:i + n - 1] == prefix]


def _ban_repeats(log_probs: np.ndarray, histories, n: int) -> np.ndarray:
    """log_probs with each row's repeating tokens at -inf (a copy; unchanged when n is 0)."""
    if n <= 0:
        return log_probs
    log_probs = np.array(log_probs, copy=True)
    for row, history in enumerate(histories):
        if history is not None and (banned := repeating_tokens(history, n)):
            log_probs[row, banned] = -np.inf
    return log_probs


def select_rows(state: tuple, rows: np.ndarray) -> tuple:
    """The state of the beams `rows` (numpy arrays, first axis)."""
    return tuple(s[rows] for s in state)


def _normalised(log_prob: float, length: int, length_penalty: float) -> float:
    return log_prob / (max(length, 1) ** length_penalty) if length_penalty else log_prob


def decode_greedy(step, state: tuple, batch: int, start_id: int, end_id: int, max_length: int,
                  no_repeat_ngram_size: int = 0, attention: bool = False) -> list[Hypothesis]:
    """The most likely word at each step, until <end> or max_length; one hypothesis per image.
    With no_repeat_ngram_size n, a word that would repeat an n-gram of the caption is never chosen."""
    tokens = np.full((batch, 1), start_id, dtype=np.int32)
    words = np.zeros((batch, max_length), dtype=np.int32)
    log_prob = np.zeros(batch, dtype=np.float64)
    length = np.zeros(batch, dtype=np.int32)
    live = np.ones(batch, dtype=bool)
    looked = []
    for t in range(max_length):
        if attention:
            log_probs, state, weights = step(tokens, state)
            looked.append(np.asarray(weights, dtype=np.float32))
        else:
            log_probs, state = step(tokens, state)
        if no_repeat_ngram_size:
            log_probs = _ban_repeats(log_probs, [[start_id, *words[i, :t]] if live[i] else None for i in range(batch)],
                                     no_repeat_ngram_size)
        best = log_probs.argmax(-1)
        log_prob += np.where(live, log_probs[np.arange(batch), best], 0.0)
        length += live
        words[:, t] = best
        live &= best != end_id
        if not live.any():
            break
        tokens = best.astype(np.int32)[:, None]
    looked = np.stack(looked, 1) if attention else None  # [batch, steps, positions]
    hypotheses = []
    for i in range(batch):
        ended = length[i] > 0 and words[i, length[i] - 1] == end_id
        ids = words[i, :length[i] - 1 if ended else length[i]].tolist()
        hypotheses.append(Hypothesis(ids, float(log_prob[i]), float(log_prob[i]),
                                     looked[i, :len(ids)] if attention else None))
    return hypotheses


def decode_beam(step, state: tuple, batch: int, start_id: int, end_id: int, max_length: int,
                beam_size: int, length_penalty: float = DEFAULT_LENGTH_PENALTY, select=select_rows,
                no_repeat_ngram_size: int = 0, attention: bool = False) -> list[list[Hypothesis]]:
    """Beam search; for each image, up to `beam_size` hypotheses, best first.

    At each step all extensions of the live beams are ranked by total log-probability; in that
    order an <end> extension becomes a finished hypothesis and any other word a live beam, until
    `beam_size` live beams are kept. Beams still live at max_length finish without <end>.
    Finished hypotheses are ranked by log_prob / length ** length_penalty, where length counts
    the generated tokens including <end>. The search stops early only when no live beam can
    still win, which without length normalisation is when every live beam scores below the
    beam_size-th finished one. With no_repeat_ngram_size n, no extension may repeat an n-gram of
    its beam. With `attention`, each beam carries the attention rows of its own words, reordered
    with it.
    """
    k = beam_size
    state = select(state, np.repeat(np.arange(batch), k))
    tokens = np.full((batch * k, 1), start_id, dtype=np.int32)
    scores = np.full((batch, k), -np.inf)
    scores[:, 0] = 0.0  # one real beam per image at the start; the others are empty slots
    histories = np.zeros((batch, k, 0), dtype=np.int32)
    looked = None  # with attention: [batch, k, words so far, positions]
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]

    def looked_at(i: int, j: int):
        return None if looked is None else looked[i, j]

    for t in range(1, max_length + 1):
        if attention:
            log_probs, state, weights = step(tokens, state)
            weights = np.asarray(weights, dtype=np.float32).reshape(batch, k, -1)
            if looked is None:
                looked = np.zeros((batch, k, 0, weights.shape[-1]), np.float32)
        else:
            log_probs, state = step(tokens, state)
        if no_repeat_ngram_size:
            log_probs = _ban_repeats(log_probs, [[start_id, *histories[i, j]] if scores[i, j] > -np.inf else None
                                                 for i in range(batch) for j in range(k)], no_repeat_ngram_size)
        vocab = log_probs.shape[-1]
        total = (scores[:, :, None] + log_probs.reshape(batch, k, vocab)).reshape(batch, k * vocab)
        # Up to k candidates can be <end>, so the best 2k always hold k live ones when that many exist.
        n_best = min(2 * k, k * vocab)
        best = np.argpartition(-total, n_best - 1, axis=1)[:, :n_best]
        best = np.take_along_axis(best, np.argsort(-np.take_along_axis(total, best, 1), axis=1, kind="stable"), 1)

        new_scores = np.full((batch, k), -np.inf)
        parents = np.zeros((batch, k), dtype=np.int64)
        words = np.zeros((batch, k), dtype=np.int32)
        for i in range(batch):
            kept = 0
            for flat in best[i]:
                score = total[i, flat]
                if kept == k or score == -np.inf:
                    break
                parent, word = divmod(int(flat), vocab)
                if word == end_id:
                    finished[i].append(Hypothesis(histories[i, parent].tolist(), float(score),
                                                  _normalised(float(score), t, length_penalty), looked_at(i, parent)))
                else:
                    new_scores[i, kept], parents[i, kept], words[i, kept] = score, parent, word
                    kept += 1
        histories = np.concatenate([np.take_along_axis(histories, parents[:, :, None], 1), words[:, :, None]], 2)
        if attention:  # each new word's row is where its parent's step looked
            looked = np.concatenate([np.take_along_axis(looked, parents[:, :, None, None], 1),
                                     np.take_along_axis(weights, parents[:, :, None], 1)[:, :, None, :]], 2)
        scores = new_scores
        rows = (parents + np.arange(batch)[:, None] * k).reshape(-1)
        state = select(state, rows)
        tokens = words.reshape(-1, 1)
        if length_penalty == 0 and all(
                len(f) >= k and scores[i].max() <= sorted(h.score for h in f)[-k] for i, f in enumerate(finished)):
            break
    else:
        for i in range(batch):
            for j in range(k):
                if scores[i, j] > -np.inf:
                    finished[i].append(Hypothesis(histories[i, j].tolist(), float(scores[i, j]),
                                                  _normalised(float(scores[i, j]), max_length, length_penalty),
                                                  looked_at(i, j)))
    return [sorted(f, key=lambda h: -h.score)[:k] for f in finished]

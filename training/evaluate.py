"""Held-out evaluation: greedy captions from the Keras step model, corpus BLEU-1..4 (sacrebleu),
and, for synthetic scenes, whether every object's size, colour and shape is right."""
from __future__ import annotations

from collections import Counter

import numpy as np
from sacrebleu.metrics import BLEU

from bundle.decoding import decode_greedy, words_of

from .synthetic import COLOURS, SHAPES, SIZES
from .vocab import Vocabulary, normalise


def greedy_captions(init_model, step_model, features: np.ndarray | list[np.ndarray], vocab: Vocabulary,
                    max_length: int, batch_size: int = 256) -> list[list[str]]:
    """Greedy captions from the Keras init/step models, decoded by the contract's decode_greedy
    and special-token rule, exactly as the server decodes the exported graphs. `features` are
    what `init_model` reads: an array, or a list of arrays (a learned encoder part's maps)."""
    def step(tokens, state):
        # The step model returns log_probs and the state it updates (h, c), then an attention decoder's
        # weights; the rest of the state (context, memory) is carried.
        log_probs, *updated = (np.asarray(x) for x in step_model([tokens, *state], training=False)[:3])
        return log_probs, (*updated, *state[len(updated):])

    special = vocab.special_ids
    captions = []
    arrays = features if isinstance(features, list) else [features]
    for first in range(0, len(arrays[0]), batch_size):
        batch = [np.asarray(a[first:first + batch_size], np.float32) for a in arrays]
        state = tuple(np.asarray(x) for x in init_model(batch if len(batch) > 1 else batch[0], training=False))
        for hypothesis in decode_greedy(step, state, len(batch[0]), special["start"], special["end"], max_length):
            captions.append(words_of(hypothesis.tokens, vocab.words, special.values()))
    return captions


def corpus_bleu(hypotheses: list[list[str]], references: list[list[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 in [0, 1] over normalised words; each image may have several references."""
    hyps = [" ".join(h) for h in hypotheses]
    most = max(len(r) for r in references)
    # sacrebleu wants one stream per reference position; pad shorter lists with their first caption.
    streams = [[" ".join(normalise(r[min(k, len(r) - 1)])) for r in references] for k in range(most)]
    return {f"bleu{n}": BLEU(max_ngram_order=n, tokenize="none", effective_order=False).corpus_score(hyps, streams).score / 100
            for n in range(1, 5)}


def objects_in_caption(words: list[str]) -> list[tuple[str, str, str]]:
    """Every (size, colour, shape) triple named in a caption, in order."""
    found = []
    for i in range(len(words) - 2):
        if words[i] in SIZES and words[i + 1] in COLOURS and words[i + 2] in SHAPES:
            found.append(tuple(words[i:i + 3]))
    return found


def attribute_accuracy(hypotheses: list[list[str]], scenes: list[list[dict]]) -> dict[str, float]:
    """Share of captions naming exactly the scene's objects (size, colour and shape each right),
    overall and by number of objects."""
    right = Counter()
    total = Counter()
    for words, objects in zip(hypotheses, scenes):
        truth = Counter((o["size"], o["colour"], o["shape"]) for o in objects)
        ok = Counter(objects_in_caption(words)) == truth
        for key in ("all", f"{len(objects)}_objects"):
            total[key] += 1
            right[key] += ok
    return {f"objects_right_{key}": right[key] / total[key] for key in sorted(total)}

"""Caption vocabulary: normalisation, special tokens, encoding, and its JSON file."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

PAD, START, END, UNKNOWN = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNKNOWN)  # ids 0..3, in this order
_NOT_WORD = re.compile(r"[^a-z0-9' ]+")


def normalise(caption: str) -> list[str]:
    """Lower-case, strip punctuation, split on whitespace."""
    return _NOT_WORD.sub(" ", caption.lower()).split()


class Vocabulary:
    """Word <-> id mapping with pad/start/end/unknown tokens at ids 0..3."""

    def __init__(self, words: list[str]):
        self.words = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        self.ids = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions, min_count: int = 1) -> "Vocabulary":
        """Keep words seen at least `min_count` times, most frequent first (ties alphabetical)."""
        counts = Counter(word for caption in captions for word in normalise(caption))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept)

    def __len__(self) -> int:
        return len(self.words)

    @property
    def special_ids(self) -> dict[str, int]:
        return {"pad": self.ids[PAD], "start": self.ids[START], "end": self.ids[END], "unknown": self.ids[UNKNOWN]}

    def encode(self, caption: str, max_length: int) -> np.ndarray:
        """<start> w1 .. wn <end>, cut to max_length words, padded to max_length + 2 ids."""
        ids = [self.ids.get(w, self.ids[UNKNOWN]) for w in normalise(caption)][:max_length]
        ids = [self.ids[START]] + ids + [self.ids[END]]
        return np.array(ids + [self.ids[PAD]] * (max_length + 2 - len(ids)), dtype=np.int32)

    def decode(self, ids) -> list[str]:
        """Words for ids, stopping at <end> and leaving out the special tokens."""
        words = []
        for i in ids:
            word = self.words[int(i)]
            if word == END:
                break
            if word not in SPECIAL_TOKENS:
                words.append(word)
        return words

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"words": self.words, "special_tokens": self.special_ids}, indent=0))

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        data = json.loads(Path(path).read_text())
        vocab = cls(data["words"][len(SPECIAL_TOKENS):])
        if vocab.words != data["words"]:
            raise ValueError(f"{path}: special tokens are not at ids 0..3")
        return vocab

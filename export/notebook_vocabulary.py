"""A notebook's vocabulary -> the bundle's word list and special tokens, read without running code.

Accepted: a pickled Keras Tokenizer (Keras 2, tf.keras, keras_preprocessing), a Tokenizer JSON
(`tokenizer.to_json()`), pickled `wordtoix` / `ixtoword` dicts (one of them, or both in a tuple,
list or dict), or one of those dicts saved with `json.dump`. A pickle from a stranger can run code, so pickles go through an unpickler that
rebuilds only plain containers and the Tokenizer class (as a bare attribute holder); anything
else is refused in one line, before it is called.
"""
from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

PAD_WORD = "<pad>"
TOKENIZER_MODULES = ("keras_preprocessing.text", "keras.preprocessing.text", "keras.src.preprocessing.text",
                     "keras.src.legacy.preprocessing.text", "keras.legacy.preprocessing.text",
                     "tensorflow.keras.preprocessing.text", "tensorflow.python.keras.preprocessing.text",
                     "tf_keras.preprocessing.text", "tf_keras.src.preprocessing.text")
SAFE_GLOBALS = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "int"),
                ("builtins", "str"), ("builtins", "float"), ("builtins", "list"), ("builtins", "dict"),
                ("builtins", "set"), ("builtins", "tuple"), ("builtins", "frozenset"), ("builtins", "bool"),
                ("builtins", "object"), ("copyreg", "_reconstructor")}


class VocabularyError(ValueError):
    """A vocabulary file the tool cannot read, or refuses to."""


class TokenizerState:
    """What a pickled Tokenizer holds (word_index, index_word, oov_token, ...), as plain attributes."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {})


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds only plain containers and Tokenizers; refuses every other global before it is called."""

    def find_class(self, module: str, name: str):
        if name == "Tokenizer" and module in TOKENIZER_MODULES:
            return TokenizerState
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise VocabularyError(f"the pickle refers to {module}.{name}, which a vocabulary never needs; "
                              "refused without running it")


def safe_unpickle(data: bytes):
    """Unpickle `data` with RestrictedUnpickler; VocabularyError for anything else or a broken pickle."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except VocabularyError:
        raise
    except Exception as exc:  # pickle raises many types for a damaged file
        raise VocabularyError(f"not a readable pickle ({type(exc).__name__}: {exc})") from None


@dataclass
class Vocabulary:
    """Words by id (id 0 is padding, as in every Tokenizer-based notebook) and the special ids."""

    words: list[str]
    start: int
    end: int
    unknown: int
    source: str                 # what the file was: "Tokenizer pickle", "wordtoix dict", ...

    @property
    def special_tokens(self) -> dict[str, int]:
        return {"pad": 0, "start": self.start, "end": self.end, "unknown": self.unknown}

    @property
    def word_ids(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(self.words) if i}


def _from_index(index_word: dict, vocab_size: int, start_word: str, end_word: str, oov: str | None,
                source: str) -> Vocabulary:
    words = [PAD_WORD] + [f"<unused-{i}>" for i in range(1, vocab_size)]
    for i, word in index_word.items():
        if 0 < int(i) < vocab_size:
            words[int(i)] = str(word)
    ids = {w: i for i, w in enumerate(words) if i}
    missing = [w for w in (start_word, end_word) if w not in ids]
    if missing:
        raise VocabularyError(f"the vocabulary ({source}) has no {' or '.join(map(repr, missing))} among its "
                              f"{vocab_size} ids; give the notebook's words with --start-word/--end-word")
    return Vocabulary(words, ids[start_word], ids[end_word], ids.get(oov, 0) if oov else 0, source)


def _index_of(mapping: dict) -> dict | None:
    """id -> word from a wordtoix or an ixtoword dict (None if it is neither)."""
    if mapping and all(isinstance(k, str) and isinstance(v, int) for k, v in mapping.items()):
        return {v: k for k, v in mapping.items()}
    if mapping and all(isinstance(k, int) and isinstance(v, str) for k, v in mapping.items()):
        return dict(mapping)
    return None


def read_vocabulary(path: Path, vocab_size: int, start_word: str = "startseq", end_word: str = "endseq") -> Vocabulary:
    """Read a notebook's vocabulary file for a model with `vocab_size` outputs."""
    data = Path(path).read_bytes()
    if data.lstrip()[:1] == b"{":
        try:
            document = json.loads(data)
        except ValueError:
            raise VocabularyError(f"{path}: not valid JSON") from None
        if isinstance(document, dict) and "config" not in document:
            # json.dump(wordtoix) or json.dump(ixtoword), whose int keys JSON turned into strings.
            ixtoword = {int(k): v for k, v in document.items() if k.isdigit() and isinstance(v, str)}
            index = _index_of(document) or (ixtoword if len(ixtoword) == len(document) else None)
            if index is None:
                raise VocabularyError(f"{path}: JSON, but not a Tokenizer's to_json() or a wordtoix/ixtoword dict")
            kind = "ixtoword JSON" if ixtoword else "wordtoix JSON"
            return _from_index(index, vocab_size, start_word, end_word, None, kind)
        try:
            config = document["config"]
            index_word = json.loads(config["index_word"]) if config.get("index_word") else None
            word_index = json.loads(config["word_index"])
        except (ValueError, KeyError, TypeError):
            raise VocabularyError(f"{path}: JSON, but not a Keras Tokenizer's to_json()") from None
        index = index_word or {v: k for k, v in word_index.items()}
        return _from_index(index, vocab_size, start_word, end_word, config.get("oov_token"), "Tokenizer JSON")
    loaded = safe_unpickle(data)
    if isinstance(loaded, TokenizerState):
        state = loaded.__dict__
        index = state.get("index_word") or {v: k for k, v in state.get("word_index", {}).items()}
        if not index:
            raise VocabularyError(f"{path}: a Tokenizer with no word_index (was it fitted?)")
        return _from_index(index, vocab_size, start_word, end_word, state.get("oov_token"), "Tokenizer pickle")
    candidates = [loaded] if isinstance(loaded, dict) else []
    if isinstance(loaded, (tuple, list)):
        candidates = [c for c in loaded if isinstance(c, dict)]
    elif isinstance(loaded, dict) and all(isinstance(v, dict) for v in loaded.values()):
        candidates = list(loaded.values())
    for candidate in candidates:
        if (index := _index_of(candidate)) is not None:
            kind = "wordtoix dict" if isinstance(next(iter(candidate)), str) else "ixtoword dict"
            return _from_index(index, vocab_size, start_word, end_word, None, kind)
    raise VocabularyError(f"{path}: a pickle of {type(loaded).__name__}, not a Tokenizer or a wordtoix/ixtoword dict")

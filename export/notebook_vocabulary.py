"""A notebook's vocabulary -> the bundle's word list and special tokens, read without running code.

Accepted: a pickled Keras Tokenizer (Keras 2, tf.keras, keras_preprocessing), a Tokenizer JSON
(`tokenizer.to_json()`), pickled `wordtoix` / `ixtoword` dicts (one of them, or both in a tuple,
list or dict), or one of those dicts saved with `json.dump`; and vocabularies as lists, where a word's
id is its position: `TextVectorization.get_vocabulary()` or a `StringLookup`'s saved with `json.dump`
or pickled, a text file with one word a line, or a saved Keras model holding a `TextVectorization`
or `StringLookup` layer. In a list, id 0 is padding ("" or "<pad>") and "[UNK]" or "<unk>" the
unknown word. The start and end words are found without flags where one known pair is present
(`startseq`/`endseq`, `<start>`/`<end>`, `[start]`/`[end]`, ...).

A pickle from a stranger can run code, so pickles go through an unpickler that rebuilds only plain
containers and the Tokenizer class (as a bare attribute holder); anything else is refused in one
line, before it is called.
"""
from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

PAD_WORD = "<pad>"
# The start and end words of the notebooks and tutorials, as their vocabularies spell them.
START_END_PAIRS = (("startseq", "endseq"), ("<start>", "<end>"), ("[start]", "[end]"), ("[START]", "[END]"),
                   ("<s>", "</s>"), ("<bos>", "<eos>"), ("sos", "eos"))
UNKNOWN_WORDS = ("[UNK]", "<unk>", "<UNK>", "[unk]")
LIST_PAD_WORDS = ("", PAD_WORD)
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


def _from_index(index_word: dict, vocab_size: int, start_word: str | None, end_word: str | None, oov: str | None,
                source: str) -> Vocabulary:
    words = [PAD_WORD] + [f"<unused-{i}>" for i in range(1, vocab_size)]
    for i, word in index_word.items():
        if 0 < int(i) < vocab_size:
            words[int(i)] = str(word)
    ids = {w: i for i, w in enumerate(words) if i}
    start_word, end_word = _start_and_end(ids, start_word, end_word, source)
    missing = [w for w in (start_word, end_word) if w not in ids]
    if missing:
        raise VocabularyError(f"the vocabulary ({source}) has no {' or '.join(map(repr, missing))} among its "
                              f"{vocab_size} ids; give the notebook's words with --start-word/--end-word")
    return Vocabulary(words, ids[start_word], ids[end_word], ids.get(oov, 0) if oov else 0, source)


def _start_and_end(ids: dict, start_word: str | None, end_word: str | None, source: str) -> tuple[str, str]:
    """The start and end words as given, or the one known pair (START_END_PAIRS) the vocabulary holds."""
    if start_word and end_word:
        return start_word, end_word
    pairs = [(s, e) for s, e in START_END_PAIRS
             if (start_word or s) == s and (end_word or e) == e and s in ids and e in ids]
    if len(pairs) == 1:
        return pairs[0]
    if not pairs:
        known = ", ".join(f"{s}/{e}" for s, e in START_END_PAIRS)
        raise VocabularyError(f"the vocabulary ({source}) holds none of the known start/end word pairs ({known}); "
                              "give the notebook's words with --start-word/--end-word")
    raise VocabularyError(f"the vocabulary ({source}) holds several start/end word pairs "
                          f"({', '.join(f'{s}/{e}' for s, e in pairs)}); say which with --start-word/--end-word")


def _from_list(words: list, vocab_size: int, start_word: str | None, end_word: str | None, source: str) -> Vocabulary:
    """A vocabulary whose word ids are list positions (TextVectorization, StringLookup, a word a line)."""
    if not words or not all(isinstance(w, str) for w in words):
        raise VocabularyError(f"a {source} must be a non-empty list of words")
    if words[0] not in LIST_PAD_WORDS:
        raise VocabularyError(f"a {source} starts with {words[0]!r}; id 0 must be padding ('' or {PAD_WORD!r}), "
                              "as get_vocabulary() gives it")
    if len(words) > vocab_size:
        raise VocabularyError(f"the {source} has {len(words)} words, the model gives {vocab_size} outputs")
    unknown = next((w for w in UNKNOWN_WORDS if w in words[1:]), None)
    return _from_index(dict(enumerate(words)), vocab_size, start_word, end_word, unknown, source)


def _saved_layer_words(path: Path) -> list[str]:
    """get_vocabulary() of the TextVectorization or StringLookup layer in a saved Keras model
    (loaded in Keras' safe mode, which runs no code from the file)."""
    import keras

    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a file it cannot read
        raise VocabularyError(f"{path}: a zip file, but not a Keras model Keras can load "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    layers = [model, *getattr(model, "_flatten_layers", lambda: [])()]
    for layer in layers:
        if type(layer).__name__ in ("TextVectorization", "StringLookup") and hasattr(layer, "get_vocabulary"):
            return [w.decode() if isinstance(w, bytes) else str(w) for w in layer.get_vocabulary()]
    raise VocabularyError(f"{path}: a Keras model with no TextVectorization or StringLookup layer")


def _index_of(mapping: dict) -> dict | None:
    """id -> word from a wordtoix or an ixtoword dict (None if it is neither)."""
    if mapping and all(isinstance(k, str) and isinstance(v, int) for k, v in mapping.items()):
        return {v: k for k, v in mapping.items()}
    if mapping and all(isinstance(k, int) and isinstance(v, str) for k, v in mapping.items()):
        return dict(mapping)
    return None


def read_vocabulary(path: Path, vocab_size: int, start_word: str | None = None,
                    end_word: str | None = None) -> Vocabulary:
    """Read a notebook's vocabulary file for a model with `vocab_size` outputs; the start and end
    words are found when not given (START_END_PAIRS)."""
    data = Path(path).read_bytes()
    if data[:2] == b"PK":
        return _from_list(_saved_layer_words(Path(path)), vocab_size, start_word, end_word,
                          "saved TextVectorization/StringLookup layer")
    if _word_a_line(path, data):
        return _from_list(_lines(path, data), vocab_size, start_word, end_word, "word-a-line text file")
    if data.lstrip()[:1] == b"[":
        try:
            document = json.loads(data)
        except ValueError:
            raise VocabularyError(f"{path}: not valid JSON") from None
        return _from_list(document, vocab_size, start_word, end_word, "word list JSON")
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
    if isinstance(loaded, (list, tuple)) and loaded and all(isinstance(w, str) for w in loaded):
        return _from_list(list(loaded), vocab_size, start_word, end_word, "pickled word list")
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


def _word_a_line(path: Path, data: bytes) -> bool:
    """A text file of words: named .txt, or no pickle (which since protocol 2 starts with 0x80) and
    a first line that is padding, as a saved get_vocabulary() begins."""
    if Path(path).suffix.lower() == ".txt":
        return True
    if data.startswith(b"\x80") or data.split(b"\n", 1)[0].strip() not in (b"", PAD_WORD.encode()):
        return False
    try:
        json.loads(data)   # JSON after a blank line is still JSON
        return False
    except ValueError:
        return True


def _lines(path: Path, data: bytes) -> list[str]:
    """A text file's words, one a line (its line number is the id; an empty first line is padding)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VocabularyError(f"{path}: not a pickle, JSON or a UTF-8 text file with one word a line") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.rstrip("\r") for line in lines]
    if any(" " in line.strip() for line in lines):
        raise VocabularyError(f"{path}: a text file, but some lines hold more than one word")
    return lines

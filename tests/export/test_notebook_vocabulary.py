"""Reading notebook vocabularies: every Tokenizer flavour and the wordtoix/ixtoword dicts, with a
restricted unpickler that refuses anything but plain containers and Tokenizers."""
import json
import os
import pickle

import pytest

from export.notebook_vocabulary import VocabularyError, read_vocabulary, safe_unpickle

CAPTIONS = ["startseq a red circle endseq", "startseq a small blue square endseq"]


def tokenizers():
    from keras_preprocessing.text import Tokenizer as KerasPreprocessing
    from tf_keras.preprocessing.text import Tokenizer as TfKeras

    for cls in (KerasPreprocessing, TfKeras):
        tokenizer = cls(oov_token="<unk>")
        tokenizer.fit_on_texts(CAPTIONS)
        yield tokenizer


@pytest.mark.parametrize("form", ["pickle", "json"])
def test_keras_2_tokenizers(tmp_path, form):
    for tokenizer in tokenizers():
        path = tmp_path / "tok"
        path.write_bytes(pickle.dumps(tokenizer) if form == "pickle" else tokenizer.to_json().encode())
        vocab = read_vocabulary(path, len(tokenizer.word_index) + 1)
        assert vocab.words[tokenizer.word_index["circle"]] == "circle" and vocab.words[0] == "<pad>"
        assert (vocab.start, vocab.end) == (tokenizer.word_index["startseq"], tokenizer.word_index["endseq"])
        assert vocab.unknown == tokenizer.word_index["<unk>"]
        assert vocab.source == ("Tokenizer pickle" if form == "pickle" else "Tokenizer JSON")


@pytest.mark.parametrize("payload", ["wordtoix", "ixtoword", "both"])
def test_notebook_dicts(tmp_path, payload):
    words = sorted({w for c in CAPTIONS for w in c.split()})
    wordtoix = {w: i + 1 for i, w in enumerate(words)}
    ixtoword = {i: w for w, i in wordtoix.items()}
    data = {"wordtoix": wordtoix, "ixtoword": ixtoword, "both": (wordtoix, ixtoword)}[payload]
    (tmp_path / "v.pkl").write_bytes(pickle.dumps(data))
    vocab = read_vocabulary(tmp_path / "v.pkl", len(words) + 1)
    assert vocab.words[1:] == words and vocab.words[vocab.start] == "startseq" and vocab.unknown == 0


@pytest.mark.parametrize("payload", ["wordtoix", "ixtoword"])
def test_notebook_dicts_saved_as_json(tmp_path, payload):
    words = sorted({w for c in CAPTIONS for w in c.split()})
    wordtoix = {w: i + 1 for i, w in enumerate(words)}
    data = wordtoix if payload == "wordtoix" else {i: w for w, i in wordtoix.items()}  # JSON makes keys strings
    (tmp_path / "v.json").write_text(json.dumps(data))
    vocab = read_vocabulary(tmp_path / "v.json", len(words) + 1)
    assert vocab.words[1:] == words and vocab.source == f"{payload} JSON"
    (tmp_path / "bad.json").write_text(json.dumps({"a": [1], "b": 2}))
    with pytest.raises(VocabularyError, match="not a Tokenizer's to_json.. or a wordtoix/ixtoword dict"):
        read_vocabulary(tmp_path / "bad.json", 3)


def test_a_vocabulary_without_the_start_word_says_which_flag_to_give(tmp_path):
    (tmp_path / "v.pkl").write_bytes(pickle.dumps({"<s>": 1, "cat": 2, "</s>": 3}))
    with pytest.raises(VocabularyError, match="no 'startseq' or 'endseq'.*--start-word"):
        read_vocabulary(tmp_path / "v.pkl", 4)
    assert read_vocabulary(tmp_path / "v.pkl", 4, "<s>", "</s>").end == 3


def test_unpickling_refuses_globals_before_calling_them(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for evil in (pickle.dumps(Payload()), pickle.dumps([{"a": 1}, Payload()]),
                 pickle.dumps(json.loads), b"not a pickle"):
        with pytest.raises(VocabularyError):
            safe_unpickle(evil)
    assert not marker.exists()

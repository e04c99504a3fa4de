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
    (tmp_path / "v.pkl").write_bytes(pickle.dumps({"go": 1, "cat": 2, "stop": 3}))
    with pytest.raises(VocabularyError, match="none of the known start/end word pairs.*--start-word/--end-word"):
        read_vocabulary(tmp_path / "v.pkl", 4)
    with pytest.raises(VocabularyError, match="no 'startseq' or 'endseq'.*--start-word"):
        read_vocabulary(tmp_path / "v.pkl", 4, "startseq", "endseq")
    assert read_vocabulary(tmp_path / "v.pkl", 4, "go", "stop").end == 3


def test_start_and_end_words_are_found_where_one_known_pair_is_present(tmp_path):
    (tmp_path / "v.pkl").write_bytes(pickle.dumps({"<s>": 1, "cat": 2, "</s>": 3}))
    vocab = read_vocabulary(tmp_path / "v.pkl", 4)
    assert (vocab.start, vocab.end) == (1, 3)
    (tmp_path / "two.json").write_text(json.dumps(["", "<start>", "<end>", "startseq", "endseq", "cat"]))
    with pytest.raises(VocabularyError, match="several start/end word pairs .startseq/endseq, <start>/<end>.*say which"):
        read_vocabulary(tmp_path / "two.json", 6)
    assert read_vocabulary(tmp_path / "two.json", 6, "startseq").end == 4   # the start word picks its pair


TEXT_VECTORIZATION = ["", "[UNK]", "a", "<start>", "<end>", "red", "circle"]   # get_vocabulary()'s order


@pytest.mark.parametrize("form", ["json", "pickle", "text", "text_pad_word"])
def test_word_lists_as_get_vocabulary_gives_them(tmp_path, form):
    words = ["<pad>", *TEXT_VECTORIZATION[1:]] if form == "text_pad_word" else TEXT_VECTORIZATION
    path = tmp_path / ("vocab.txt" if form.startswith("text") else "vocab")
    if form == "json":
        path.write_text(json.dumps(words))
    elif form == "pickle":
        path.write_bytes(pickle.dumps(words))
    else:
        path.write_text("\n".join(words) + "\n")
    vocab = read_vocabulary(path, 10)   # the model's Dense may have more outputs than words
    assert vocab.words[:7] == ["<pad>", "[UNK]", "a", "<start>", "<end>", "red", "circle"]
    assert (vocab.start, vocab.end, vocab.unknown) == (3, 4, 1)
    assert vocab.source == {"json": "word list JSON", "pickle": "pickled word list"}.get(form, "word-a-line text file")


def test_a_saved_text_vectorization_layer(tmp_path):
    import keras

    layer = keras.layers.TextVectorization(standardize=None)
    layer.adapt(["<start> a red circle <end>", "<start> a circle <end>"])
    model = keras.Sequential([keras.Input((), dtype="string"), layer])
    model.save(tmp_path / "vectorizer.keras")
    vocab = read_vocabulary(tmp_path / "vectorizer.keras", 8)
    assert vocab.words[vocab.start] == "<start>" and vocab.source == "saved TextVectorization/StringLookup layer"
    assert vocab.words[1:len(layer.get_vocabulary())] == layer.get_vocabulary()[1:]


def test_word_lists_that_cannot_be_ids_are_refused(tmp_path):
    (tmp_path / "v.json").write_text(json.dumps(["a", "<start>", "<end>"]))
    with pytest.raises(VocabularyError, match="starts with 'a'; id 0 must be padding"):
        read_vocabulary(tmp_path / "v.json", 3)
    (tmp_path / "long.json").write_text(json.dumps(["", "<start>", "<end>", "a"]))
    with pytest.raises(VocabularyError, match="has 4 words, the model gives 3 outputs"):
        read_vocabulary(tmp_path / "long.json", 3)


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

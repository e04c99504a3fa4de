import numpy as np

from training.vocab import Vocabulary, normalise


def test_normalise():
    assert normalise("A Dog, running!  In the PARK.") == ["a", "dog", "running", "in", "the", "park"]


def test_build_min_count_and_special_tokens():
    vocab = Vocabulary.build(["a red circle", "a blue circle", "a rare word"], min_count=2)
    assert vocab.words[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert vocab.words[4:] == ["a", "circle"]
    assert vocab.special_ids == {"pad": 0, "start": 1, "end": 2, "unknown": 3}


def test_encode_decode_round_trip():
    vocab = Vocabulary.build(["a red circle", "a blue square"])
    ids = vocab.encode("A red square, green", max_length=5)
    assert ids.tolist()[:6] == [1, vocab.ids["a"], vocab.ids["red"], vocab.ids["square"], 3, 2]
    assert len(ids) == 7 and ids[-1] == 0
    assert vocab.decode(ids) == ["a", "red", "square"]
    assert vocab.encode("a red circle a blue square", max_length=3).tolist() == \
        [1, vocab.ids["a"], vocab.ids["red"], vocab.ids["circle"], 2]


def test_save_load(tmp_path):
    vocab = Vocabulary.build(["one two two three three three"])
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert loaded.words == vocab.words
    assert np.array_equal(loaded.encode("three two", 4), vocab.encode("three two", 4))

import pytest

from training.evaluate import attribute_accuracy, corpus_bleu, objects_in_caption


def test_objects_in_caption():
    words = "a small red circle to the left of a large blue square".split()
    assert objects_in_caption(words) == [("small", "red", "circle"), ("large", "blue", "square")]
    assert objects_in_caption("a red circle".split()) == []


def test_attribute_accuracy_needs_every_object_right():
    scenes = [[{"size": "small", "colour": "red", "shape": "circle"}],
              [{"size": "small", "colour": "red", "shape": "circle"}, {"size": "large", "colour": "blue", "shape": "square"}],
              [{"size": "large", "colour": "green", "shape": "triangle"}]]
    hyps = ["a small red circle in the center".split(),
            "a large blue square next to a small red circle".split(),      # order does not matter
            "a large green triangle beside a small red circle".split()]     # an extra object is wrong
    scores = attribute_accuracy(hyps, scenes)
    assert scores["objects_right_all"] == pytest.approx(2 / 3)
    assert scores["objects_right_1_objects"] == pytest.approx(1 / 2)
    assert scores["objects_right_2_objects"] == 1.0


def test_corpus_bleu():
    refs = [["a small red circle", "one small red circle"], ["a big dog runs fast", "a dog runs"]]
    perfect = corpus_bleu([["a", "small", "red", "circle"], ["a", "big", "dog", "runs", "fast"]], refs)
    assert perfect["bleu4"] == pytest.approx(1.0)
    poor = corpus_bleu([["circle"], ["dog"]], refs)
    assert poor["bleu1"] < 0.2 and poor["bleu4"] < perfect["bleu4"]

"""The COCO caption metrics (pycocoevalcap) on a tiny set whose scores are worked out by hand,
and on real-format data (a Flickr8k folder without scene truth) through training and the
reduced-precision quality gate."""
import json
import shutil

import pytest

from tests.conftest import run_cli
from training.caption_metrics import METEOR_MISSING, coco_metrics, java_available

REFERENCES = [["The man is playing a guitar.", "a man is playing a guitar"],
              ["a woman is slicing cucumbers", "the woman is slicing cucumbers", "a woman is cutting cucumbers"]]
CAPTIONS = [["man", "is", "playing", "guitar"], ["a", "woman", "is", "cutting", "vegetables"]]


def test_bleu1_and_rouge_l_as_worked_out_by_hand():
    scores = coco_metrics(CAPTIONS, REFERENCES, meteor=False)
    # BLEU-1: 8 of 9 words match; 9 words against the closest references' 6 + 5 gives a brevity
    # penalty of exp(1 - 11/9).
    assert scores["coco_bleu1"] == pytest.approx(8 / 9 * 2.718281828 ** (1 - 11 / 9), abs=1e-6)
    # ROUGE-L (beta 1.2): the best precision and recall over the references, from the longest common
    # subsequence: 4 of 4 words and 4 of 6 in the first, 4 of 5 both ways in the second.
    def f(p, r, beta=1.2):
        return (1 + beta ** 2) * p * r / (r + beta ** 2 * p)
    assert scores["rouge_l"] == pytest.approx((f(1, 4 / 6) + f(4 / 5, 4 / 5)) / 2, abs=1e-6)
    assert 0 < scores["coco_bleu4"] < scores["coco_bleu3"] < scores["coco_bleu2"] < scores["coco_bleu1"]
    assert "meteor" not in scores


def test_cider_d_of_captions_equal_to_their_references():
    # Each n-gram order up to 4 that a caption has scores 10 (cosine 1, no length penalty); a
    # three-word caption has no 4-gram: (10 + 10 + 10 + 0) / 4 = 7.5, and a six-word one 10.
    scores = coco_metrics([["a", "red", "circle"], ["a", "blue", "square", "on", "the", "left"]],
                          [["a red circle"], ["a blue square on the left"]], meteor=False)
    assert scores["cider_d"] == pytest.approx((7.5 + 10) / 2)
    assert scores["rouge_l"] == pytest.approx(1.0) and scores["coco_bleu4"] == pytest.approx(1.0)


@pytest.mark.skipif(not java_available(), reason=METEOR_MISSING)
def test_meteor_where_java_is_installed():
    scores = coco_metrics(CAPTIONS, REFERENCES)
    assert 0.2 < scores["meteor"] < 0.6
    assert coco_metrics([["a", "red", "circle"]], [["a red circle"]])["meteor"] > 0.9


def test_mismatched_lists_are_refused():
    with pytest.raises(ValueError, match="2 captions for 1"):
        coco_metrics(CAPTIONS, REFERENCES[:1])


@pytest.fixture(scope="module")
def real_format_run(shapes_dataset, tmp_path_factory):
    """A decoder trained briefly on a Flickr8k-format folder: the shapes images and captions
    without their scene truth, so everything treats it as real data."""
    data = tmp_path_factory.mktemp("real") / "flickr8k"
    shutil.copytree(shapes_dataset, data, ignore=shutil.ignore_patterns("scenes.json"))
    out = data.parent / "run"
    run_cli("training.train", "--dataset", "flickr8k", "--data", str(data), "--out", str(out),
            "--cache-dir", str(data.parent / "cache"), "--units", "32", "--embedding-dim", "16", "--epochs", "2",
            "--batch-size", "16", "--limit", "48", "--quiet")
    return out


def test_training_reports_the_coco_metrics_on_real_data(real_format_run):
    metrics = json.loads((real_format_run / "metrics.json").read_text())
    for key in ("coco_bleu1", "coco_bleu4", "rouge_l", "cider_d", "bleu4"):
        assert isinstance(metrics[key], float), key
    assert ("meteor" in metrics) == java_available()
    assert "objects_right_all" not in metrics


def test_the_quality_gate_judges_real_data_by_cider_d(real_format_run):
    from export.heldout_quality import quality, run_scenes

    run = json.loads((real_format_run / "run.json").read_text())
    heldout = json.loads((real_format_run / "heldout.json").read_text())
    assert run_scenes(run) is None
    metric, value = quality([h["keras_greedy"].split() for h in heldout], heldout, None)
    trained = json.loads((real_format_run / "metrics.json").read_text())["cider_d"]
    assert metric == "cider_d" and value == pytest.approx(trained)

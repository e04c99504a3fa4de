"""The held-out drawn scenes (code separate from training.synthetic) and their HTTP scorer."""
import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from training.evaluate import objects_in_caption

from .drawn_scenes import SIZE_SHARES, other_drawn, paint_drawings, shape_mask
from .score_http import degenerate, score


@pytest.fixture(scope="module")
def other():
    return other_drawn()


def test_the_sets_are_fixed_and_well_formed(other):
    paint = paint_drawings()
    assert len(other) == 120 and len(paint) == 18
    assert [s.png for s in other[:5]] == [s.png for s in other_drawn()[:5]]  # the same set every run
    sizes = Counter(Image.open(io.BytesIO(s.png)).size for s in other)
    assert sizes == {(299, 299): 60, (640, 480): 60}
    assert Counter(len(s.objects) for s in other + paint).keys() == {1, 2}
    for scene in other + paint:
        assert len(set(scene.objects)) == len(scene.objects)
        for size, colour, shape in scene.objects:
            assert objects_in_caption(f"a {size} {colour} {shape}".split()) == [(size, colour, shape)]
    canvases = {s.name.split("-")[1] for s in paint}
    assert canvases == {"white", "grey", "black"}


# Areas over half squared: a disc; a square 0.88 half to each side; a triangle 1.8 half high
# (apex 1.05 above the centre, base 0.75 below) on a base 2 half wide.
@pytest.mark.parametrize("shape, area_per_half_squared", [("circle", np.pi), ("square", 4 * 0.88 ** 2),
                                                          ("triangle", 0.5 * 2 * 1.8)])
def test_shape_masks_have_their_geometric_area(shape, area_per_half_squared):
    half = 60.0
    mask = shape_mask(shape, 150, 150, half, 300, 300)
    assert mask.sum() == pytest.approx(area_per_half_squared * half * half, rel=0.03)
    ys, xs = np.nonzero(mask)
    assert xs.mean() == pytest.approx(150, abs=1)  # centred left to right


def test_small_and_large_do_not_overlap():
    assert SIZE_SHARES["small"][1] < SIZE_SHARES["large"][0]


@pytest.mark.parametrize("caption, expected", [
    ("a small green circle in the center", False),
    ("a small red circle to the left of a small red square", False),   # repeats three words: allowed
    ("the small small small small small", True),
    ("a picture a the square the the a the square", True),
    ("a small red circle and a small red circle and", True),
])
def test_degenerate_captions_are_told_apart(caption, expected):
    assert degenerate(caption.split()) is expected


def test_scoring_goes_through_the_http_api(server, other):
    scenes = other[:6] + paint_drawings()[:3]
    result = score(server.url, scenes)
    assert result["scenes"] == 9 and set(result["captions"]) == {s.name for s in scenes}
    for scene in scenes:
        said = Counter(objects_in_caption(result["captions"][scene.name].split()))
        assert (scene.name not in result["wrong"]) == (said == Counter(scene.objects))
    assert result["right"] == 9 - len(result["wrong"])
    assert result["degenerate"] == sum(degenerate(c.split()) for c in result["captions"].values())


def test_the_scorer_refuses_a_missing_bundle_in_one_line(tmp_path, capsys):
    from .score_http import main

    assert main(["--bundle", str(tmp_path / "none")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: no model bundle at")


def test_the_recorded_scores_make_the_quality_page(attention_bundle_dir):
    from tests.quality.score_http import markdown, recorded

    results = {"other-drawn": {"scenes": 120, "right": 90, "degenerate": 1, "captions": {}},
               "paint": {"scenes": 18, "right": 17, "degenerate": 0, "captions": {}}}
    figures = recorded(results, str(attention_bundle_dir))
    page = markdown(figures)
    assert "| drawn by other code: 120 scenes, every object right | **75.0%** (90), 1 degenerate |" in page
    assert "| paint-program drawings, every object right | **17 / 18**, 0 degenerate |" in page
    assert "own held-out scenes" in page and "greedy captions identical" in page
    assert "own held-out scenes" not in markdown(recorded(results, None))
    # The encoder's FLOPs counted on its ONNX graph are the trunk's and the learned part's convolutions,
    # as training counted them from the Keras layers (the rest of the graph adds no multiply-adds).
    flops = figures["bundle"]["encoder_flops"]
    assert abs(flops["onnx_graph"] - flops["inception_v3"] - flops["learned_part"]) < 1e-3 * flops["onnx_graph"]
    assert "| encoder FLOPs, counted on its ONNX graph |" in page

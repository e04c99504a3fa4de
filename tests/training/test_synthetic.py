import json

from training.datasets import load_flickr8k
from training.evaluate import objects_in_caption
from training.synthetic import generate
from training.vocab import normalise


def test_layout_and_ground_truth(tmp_path):
    info = generate(tmp_path / "a", images=30, seed=5)
    splits = load_flickr8k(tmp_path / "a")
    assert sum(len(v) for v in splits.values()) == 30
    assert all(len(v) > 0 for v in splits.values())
    scenes = json.loads((tmp_path / "a" / "scenes.json").read_text())["scenes"]
    assert scenes == info["scenes"]
    for example in splits["train"] + splits["dev"] + splits["test"]:
        assert example.image.is_file()
        assert len(example.captions) == 5 and len(set(example.captions)) == 5
        truth = sorted((o["size"], o["colour"], o["shape"]) for o in scenes[example.image.name])
        assert len(truth) in (1, 2)
        for caption in example.captions:  # every caption names every object exactly
            assert sorted(objects_in_caption(normalise(caption))) == truth


def test_deterministic_for_a_seed(tmp_path):
    generate(tmp_path / "a", images=12, seed=9)
    generate(tmp_path / "b", images=12, seed=9)
    generate(tmp_path / "c", images=12, seed=10)
    for name in ("Flickr8k.token.txt", "Flickr_8k.trainImages.txt", "scenes.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "Flickr8k.token.txt").read_text() != (tmp_path / "c" / "Flickr8k.token.txt").read_text()
    first = sorted((tmp_path / "a" / "Images").iterdir())[0]
    assert first.read_bytes() == (tmp_path / "b" / "Images" / first.name).read_bytes()


def test_relations_follow_the_layout(tmp_path):
    info = generate(tmp_path / "a", images=40, seed=2, two_object_fraction=1.0)
    lines = (tmp_path / "a" / "Flickr8k.token.txt").read_text().splitlines()
    for line in lines:
        key, caption = line.split("\t")
        objects = info["scenes"][key.split("#")[0]]
        first = objects_in_caption(normalise(caption))[0]
        if "left of" in caption:  # the first object named is the left one
            left = min(objects, key=lambda o: o["x"])
            assert first == (left["size"], left["colour"], left["shape"])
        if " above " in caption:
            upper = min(objects, key=lambda o: o["y"])
            assert first == (upper["size"], upper["colour"], upper["shape"])

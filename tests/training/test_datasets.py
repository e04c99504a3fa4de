import json

import pytest

from training.datasets import DatasetError, load_coco, load_dataset, load_flickr8k


def make_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"jpeg")


def test_flickr8k_token_file_and_split_lists(tmp_path):
    make_images(tmp_path / "Flicker8k_Dataset", ["a.jpg", "b.jpg", "c.jpg"])
    (tmp_path / "Flickr8k.token.txt").write_text(
        "a.jpg#0\tA dog runs .\na.jpg#1\tA dog is running\nb.jpg#0\tTwo cats\nc.jpg#0\tA bird\n\n")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("a.jpg\nb.jpg\n")
    (tmp_path / "Flickr_8k.devImages.txt").write_text("c.jpg\n")
    (tmp_path / "Flickr_8k.testImages.txt").write_text("c.jpg\n")
    splits = load_flickr8k(tmp_path)
    assert [e.image.name for e in splits["train"]] == ["a.jpg", "b.jpg"]
    assert splits["train"][0].captions == ["A dog runs .", "A dog is running"]
    assert splits["train"][0].image == tmp_path / "Flicker8k_Dataset" / "a.jpg"
    assert splits["test"][0].captions == ["A bird"]


def test_flickr8k_captions_csv(tmp_path):
    make_images(tmp_path / "Images", [f"{i}.jpg" for i in range(10)])
    rows = "".join(f'{i}.jpg,"caption, number {i}"\n{i}.jpg,second {i}\n' for i in range(10))
    (tmp_path / "captions.txt").write_text("image,caption\n" + rows)
    splits = load_dataset("flickr8k", tmp_path)
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [8, 1, 1]
    assert splits["train"][0].captions == ["caption, number 0", "second 0"]


def test_flickr8k_errors_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="no image folder"):
        load_flickr8k(tmp_path)
    make_images(tmp_path / "Images", ["a.jpg"])
    with pytest.raises(DatasetError, match="neither"):
        load_flickr8k(tmp_path)
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0 no tab here\n")
    with pytest.raises(DatasetError, match="expected"):
        load_flickr8k(tmp_path)
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0\tfine\n")
    for split in ("train", "dev", "test"):
        (tmp_path / f"Flickr_8k.{split}Images.txt").write_text("a.jpg\nmissing.jpg\n")
    with pytest.raises(DatasetError, match="have no captions"):
        load_flickr8k(tmp_path)


def test_coco_captions_json(tmp_path):
    images = [{"id": 100 + i, "file_name": f"COCO_train2014_{i:012d}.jpg"} for i in range(10)]
    annotations = [{"id": k, "image_id": 100 + k % 10, "caption": f"caption {k}"} for k in range(20)]
    path = tmp_path / "captions_train2014.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    splits = load_coco(path, tmp_path / "train2014")
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [8, 1, 1]
    first = splits["train"][0]
    assert first.image == tmp_path / "train2014" / "COCO_train2014_000000000000.jpg"
    assert first.captions == ["caption 0", "caption 10"]
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="not a COCO captions file"):
        load_coco(path, tmp_path)
    with pytest.raises(DatasetError, match="--image-dir"):
        load_dataset("coco", path)

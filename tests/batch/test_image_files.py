"""Where batch captioning finds images: local paths as written, pyarrow URIs, list files."""
from pathlib import Path

import pytest

from batch.image_files import UsageError, find_images, read_bytes, read_list_file


@pytest.fixture
def tree(tmp_path) -> Path:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/one.jpg", "a/deep/two.PNG", "a/notes.txt", "three.webp"):
        (tmp_path / name).write_bytes(name.encode())
    return tmp_path


def test_local_folders_and_globs_keep_the_paths_as_written(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert find_images(["a"]) == ["a/deep/two.PNG", "a/one.jpg"]
    assert find_images(["*.webp", "a/one.jpg", "a/notes.txt"]) == ["a/notes.txt", "a/one.jpg", "three.webp"]
    with pytest.raises(UsageError, match="missing: no such file"):
        find_images(["missing"])


def test_uris_are_listed_through_pyarrow(tree):
    root = f"file://{tree}"
    assert find_images([root]) == [f"{root}/a/deep/two.PNG", f"{root}/a/one.jpg", f"{root}/three.webp"]
    assert find_images([f"{root}/a/*.jpg"]) == [f"{root}/a/one.jpg"]
    assert find_images([f"{root}/a/notes.txt"]) == [f"{root}/a/notes.txt"]  # named: kept whatever its suffix
    assert read_bytes(f"{root}/a/one.jpg") == b"a/one.jpg"
    with pytest.raises(UsageError, match="no such file"):
        find_images([f"{root}/nowhere"])
    with pytest.raises(OSError):
        read_bytes(f"{root}/a/gone.jpg")


def test_list_files_skip_blanks_and_comments_and_keep_entries_unchecked(tree):
    listing = tree / "list.txt"
    listing.write_text("# my photos\na/one.jpg\n\n  missing.jpg  \nfile:///x/y.png\n"
                       "b.png  # a comment after the path\nphoto#2.jpg\n\t# indented comment\n")
    expected = ["a/one.jpg", "missing.jpg", "file:///x/y.png", "b.png", "photo#2.jpg"]
    assert read_list_file(str(listing)) == expected
    assert read_list_file(f"file://{listing}") == expected
    with pytest.raises(UsageError, match="cannot read the list file"):
        read_list_file(str(tree / "absent.txt"))

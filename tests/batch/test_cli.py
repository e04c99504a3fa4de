"""The `caption` command: folders, files and globs in; JSON lines or CSV out; bad files skipped; resumable."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.doc_commands import shell_lines
from harness.server_process import ROOT

CAPTION = Path(sys.executable).parent / "caption"  # the console entry point `make install` puts in the venv


def caption(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(CAPTION), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def image_folder(trained_run, tmp_path_factory):
    """Six held-out scenes in a folder tree, one non-image named .jpg, and the expected captions."""
    heldout = json.loads((trained_run / "heldout.json").read_text())[:6]
    root = tmp_path_factory.mktemp("photos")
    (root / "nested").mkdir()
    expected = {}
    for i, item in enumerate(heldout):
        target = root / ("nested" if i % 2 else ".") / f"scene{i}.jpg"
        shutil.copy(item["image"], target)
        expected[str(target.resolve())] = item["keras_greedy"]
    (root / "notes.txt").write_text("not an image")      # skipped: not an image suffix
    (root / "broken.jpg").write_text("not a jpeg either")  # tried, and reported
    return root, expected


def rows_by_path(path: Path) -> dict:
    return {str(Path(r["path"]).resolve()): r for r in map(json.loads, path.read_text().splitlines())}


def test_folder_to_jsonl_matches_keras_and_reports_bad_files(bundle_dir, image_folder, tmp_path):
    root, expected = image_folder
    out = tmp_path / "captions.jsonl"
    result = caption(root, "--bundle", bundle_dir, "--out", out, "--batch-size", "4")
    assert result.returncode == 1, result.stderr  # one file was skipped
    rows = rows_by_path(out)
    assert {p: r["caption"] for p, r in rows.items() if "caption" in r} == expected
    broken = rows[str((root / "broken.jpg").resolve())]
    assert "caption" not in broken and broken["error"].startswith("the file is not an image")  # not "the upload"
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr
    assert "6 captioned, 1 skipped" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_documented_resume_skips_what_is_done_and_retries_what_failed(bundle_dir, image_folder, tmp_path):
    """docs/deploying.md's two commands, run as written: the second skips what is done, tries
    again what failed (replacing its error row) and exits 0 only when every image has a caption."""
    first_command, again_command = shell_lines("deploying.md", ".venv/bin/caption photos/")
    shared, expected = image_folder
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    photos, more = tmp_path / "photos", tmp_path / "more"
    shutil.copytree(shared, photos, ignore=shutil.ignore_patterns("nested"))  # scene0, 2, 4, broken.jpg
    more.mkdir()
    (photos / "scene4.jpg").rename(more / "scene4.jpg")
    captions = {Path(p).name: c for p, c in expected.items()}

    def run(command):
        return subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "CAPTION_BUNDLE": str(bundle_dir)})

    def rows():
        out = tmp_path / "captions.jsonl"
        lines = out.read_text().splitlines()
        found = {Path(r["path"]).name: r for r in map(json.loads, lines)}
        assert len(found) == len(lines), "one row per image"
        return found

    first = run(first_command)
    assert first.returncode == 1, first.stderr  # broken.jpg
    assert {name: r.get("caption") for name, r in rows().items()} == {
        "scene0.jpg": captions["scene0.jpg"], "scene2.jpg": captions["scene2.jpg"],
        "scene4.jpg": captions["scene4.jpg"], "broken.jpg": None}
    with open(tmp_path / "captions.jsonl", "a") as f:
        f.write('{"path": "half a li')  # as if killed mid-write
    shutil.copytree(shared / "nested", photos / "nested")  # more photos since

    again = run(again_command)
    assert again.returncode == 1, again.stderr  # broken.jpg is still broken
    assert "2 of 6 images already in" in again.stderr and "1 of them failed before" in again.stderr
    assert {name: r.get("caption") for name, r in rows().items()} == {**captions, "broken.jpg": None}

    shutil.copy(photos / "scene0.jpg", photos / "broken.jpg")  # mended
    mended = run(again_command)
    assert mended.returncode == 0, mended.stderr
    assert "5 of 6 images already in" in mended.stderr
    assert {name: r.get("caption") for name, r in rows().items()} == {**captions, "broken.jpg": captions["scene0.jpg"]}


def test_csv_output_and_explicit_files(bundle_dir, image_folder, tmp_path):
    root, expected = image_folder
    out = tmp_path / "captions.csv"
    files = sorted(p for p in expected)[:2]
    result = caption(*files, "--bundle", bundle_dir, "--out", out, "--beam-size", "1", "--quiet")
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["caption"] for r in rows] == [expected[p] for p in files]
    assert list(rows[0]) == ["path", "caption", "tokens", "log_prob", "error"]  # as docs/deploying.md lists them
    assert all(r["tokens"] and r["caption"].startswith(r["tokens"].split()[0]) for r in rows)
    assert all(float(r["log_prob"]) < 0 and r["error"] == "" for r in rows)


@pytest.mark.parametrize("args, reason", [
    (["/no/such/folder"], "no such file"),
    (["{folder}", "--bundle", "/no/such/bundle"], "bundle"),
    (["{folder}", "--batch-size", "0"], "--batch-size"),
    (["{folder}", "--beam-size", "99"], "--beam-size"),
    (["{folder}", "--attention"], "no attention weights"),          # the test bundle's decoder is pooled
    (["{folder}", "--attention", "--format", "csv"], "drop --format csv"),
    (["{folder}", "--attention", "--out", "att.csv"], "write them to a .jsonl file, not att.csv"),
])
def test_bad_arguments_exit_2_with_one_line(bundle_dir, image_folder, args, reason):
    root, _ = image_folder
    args = [a.format(folder=root) for a in args]
    result = caption(*args, env={"CAPTION_BUNDLE": str(bundle_dir)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caption: error:") and reason in lines[0], result.stderr


def test_attention_weights_for_every_word(attention_bundle_dir, image_folder, tmp_path):
    root, _ = image_folder
    out = tmp_path / "looked.jsonl"
    result = caption(root / "nested", "--bundle", attention_bundle_dir, "--out", out, "--attention", "--beam-size", "2",
                     "--quiet")
    assert result.returncode == 0, result.stderr
    rows = list(rows_by_path(out).values())
    assert len(rows) == 3
    for row in rows:
        assert row["attention"]["grid"] == [8, 8]
        assert len(row["attention"]["weights"]) == len(row["tokens"])
        assert all(len(w) == 64 and abs(sum(w) - 1) < 1e-2 for w in row["attention"]["weights"])

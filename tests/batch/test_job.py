"""The job folder of `caption --ray`: shards written whole, read back as the CLI's rows, resumed only
with the same settings."""
import json

import pytest

from batch.job import open_job
from batch.image_files import UsageError

SETTINGS = {"inputs": ["photos"], "list": None, "bundle_sha256": "sha256:0", "beam_size": 1,
            "length_penalty": 1.0, "output_format": "jsonl", "shard_size": None}
ROWS = [{"path": "photos/a.jpg", "caption": "a red circle", "tokens": ["a", "red", "circle"], "log_prob": -1.5},
        {"path": "photos/b.jpg", "error": "the upload is empty"}]


def new_job(out, **changes):
    images = [f"photos/{i}.jpg" for i in range(10)]
    return open_job(str(out), {**SETTINGS, **changes}, lambda: images, lambda n: 4)


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_shards_round_trip_in_the_single_machine_commands_form(tmp_path, output_format):
    job = new_job(tmp_path / "job", output_format=output_format)
    assert (job.images, job.shard_size, job.shards) == (10, 4, 3)
    assert job.shard_paths(2) == ["photos/8.jpg", "photos/9.jpg"]
    job.write_shard(1, ROWS)
    assert job.pending() == [0, 2]
    assert job.read_shard(1) == ROWS
    assert [p.name for p in (tmp_path / "job").iterdir() if ".tmp-" in p.name] == []
    if output_format == "jsonl":  # byte for byte what `caption --out x.jsonl` writes
        assert (tmp_path / "job" / "captions-00001.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in ROWS)


def test_a_resumed_job_keeps_its_listing_and_drops_half_written_shards(tmp_path):
    job = new_job(tmp_path / "job")
    job.write_shard(0, ROWS)
    (tmp_path / "job" / "captions-00001.jsonl.tmp-abc").write_text('{"path": "half')
    again = open_job(str(tmp_path / "job"), SETTINGS, lambda: pytest.fail("listed again"), lambda n: 99)
    assert (again.shard_size, again.pending()) == (4, [1, 2])
    assert not (tmp_path / "job" / "captions-00001.jsonl.tmp-abc").exists()
    assert again.readable("photos/a.jpg") == f"{job.base}/photos/a.jpg"
    assert again.readable("s3://bucket/a.jpg") == "s3://bucket/a.jpg"


def test_other_settings_or_folders_are_refused_in_one_line(tmp_path):
    new_job(tmp_path / "job")
    with pytest.raises(UsageError, match="holds a job with beam_size 1, not 3"):
        new_job(tmp_path / "job", beam_size=3)
    with pytest.raises(UsageError, match="holds a job with shard_size 4, not 8"):
        new_job(tmp_path / "job", shard_size=8)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty and holds no caption job"):
        new_job(tmp_path / "other")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        new_job(tmp_path / "file")
    with pytest.raises(UsageError, match="no image files"):
        open_job(str(tmp_path / "empty"), SETTINGS, lambda: [], lambda n: 4)

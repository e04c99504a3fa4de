"""`caption --ray` on a local Ray (2 CPUs): the single-machine command's rows, sharded; bad images as
error rows; a killed job resumed without redoing its finished shards; the Python entry point."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.server_process import ROOT
from batch.job import CaptionJob, open_job

CAPTION = Path(sys.executable).parent / "caption"
QUIET = {"RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def caption(*args, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([str(CAPTION), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **QUIET}, **popen)


@pytest.fixture(scope="module")
def photos(shapes_dataset, tmp_path_factory) -> Path:
    """Forty generated scenes (JPEG and PNG) in a folder tree, a corrupt JPEG and an empty file."""
    root = tmp_path_factory.mktemp("ray-photos")
    scenes = sorted(p for p in (shapes_dataset / "Images").iterdir())[:40]
    for i, scene in enumerate(scenes):
        folder = root / f"batch{i % 3}"
        folder.mkdir(exist_ok=True)
        shutil.copy(scene, folder / scene.name)
    (root / "batch0" / "corrupt.jpg").write_bytes(scenes[0].read_bytes()[:40] + b"\0" * 100)
    (root / "batch1" / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def single_rows(bundle_dir, photos, tmp_path_factory) -> list[dict]:
    """The one-process command's rows, to compare against."""
    out = tmp_path_factory.mktemp("single") / "captions.jsonl"
    result = caption(photos, "--bundle", bundle_dir, "--out", out, "--quiet")
    assert result.returncode == 1, result.stderr  # two bad files
    return [json.loads(line) for line in out.read_text().splitlines()]


def session_members(session: int) -> list[int]:
    """Live processes of a session: Ray's actors have their own process groups, but not their own session."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def kill_session(session: int) -> None:
    deadline = time.monotonic() + 30
    while (members := session_members(session)) and time.monotonic() < deadline:
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    assert not session_members(session), "the job's processes outlived SIGKILL"


def shard_rows(out: Path) -> list[dict]:
    return [json.loads(line) for shard in sorted(out.glob("captions-*.jsonl")) for line in shard.read_text().splitlines()]


def test_ray_rows_equal_the_single_machine_commands_and_bad_images_are_error_rows(bundle_dir, photos, single_rows,
                                                                                  tmp_path):
    out = tmp_path / "job"
    result = caption("--ray", photos, "--bundle", bundle_dir, "--out", out, "--shard-size", "8")
    assert result.returncode == 1, result.stderr[-3000:]  # finished, with two images skipped
    assert "40 captioned, 2 skipped" in result.stderr and "6 shards on 2 actors" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(list(out.glob("captions-*.jsonl"))) == 6
    rows = shard_rows(out)
    assert rows == single_rows
    errors = {Path(r["path"]).name: r["error"] for r in rows if "error" in r}
    assert set(errors) == {"corrupt.jpg", "empty.png"}
    assert sum("caption" in r for r in rows) == 40


def test_a_killed_job_resumes_without_redoing_finished_shards(bundle_dir, photos, single_rows, tmp_path):
    out = tmp_path / "job"
    command = [str(CAPTION), "--ray", str(photos), "--bundle", str(bundle_dir), "--out", str(out), "--quiet",
               "--shard-size", "2", "--beam-size", "3"]
    job = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **QUIET}, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(out.glob("captions-*.jsonl")) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    kill_session(job.pid)  # the driver, its local Ray and the actors, as if the machine went down
    job.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("captions-*.jsonl")}
    assert 1 <= len(finished) < 21, "the job should have been killed midway"

    resumed = caption(*command[1:])
    assert resumed.returncode == 1, resumed.stderr[-3000:]
    assert f"{len(finished)} of 21 shards already in" in resumed.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == finished  # not redone
    assert not list(out.glob("*.tmp-*"))
    rows = shard_rows(out)
    assert [r["path"] for r in rows] == [r["path"] for r in single_rows]
    assert all(("error" in r) == ("error" in s) for r, s in zip(rows, single_rows))


def test_a_folder_holding_another_job_is_refused_before_ray_starts(bundle_dir, photos, tmp_path):
    out = tmp_path / "job"
    open_job(str(out), {"beam_size": 5}, lambda: ["x.jpg"], lambda n: 1)
    result = caption("--ray", photos, "--bundle", bundle_dir, "--out", out)
    assert result.returncode == 2
    assert result.stderr.startswith("caption: error: ") and "holds a job" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    for args, reason in (((photos,), "needs --out"), ((photos, "--out", out, "--format", "csv"), "not csv"),
                         (("--out", tmp_path / "x"), "name images")):
        result = caption("--ray", "--bundle", bundle_dir, *args)
        assert result.returncode == 2 and reason in result.stderr, result.stderr


def test_the_python_entry_point_reads_uris_and_list_files_into_parquet(bundle_dir, photos, single_rows, tmp_path):
    import ray

    from batch.ray_job import caption_dataset

    listing = tmp_path / "list.txt"
    chosen = [r["path"] for r in single_rows[::3]]
    listing.write_text("\n".join(chosen) + "\n")
    out = f"file://{tmp_path}/job"
    try:
        summary = caption_dataset([], out, bundle=f"file://{bundle_dir}", list_file=f"file://{listing}",
                                  output_format="parquet", ray_cpus=2, progress=False)
    finally:
        ray.shutdown()
    assert (summary.images, summary.shards_before, summary.captioned + summary.skipped) == (len(chosen), 0, len(chosen))
    job = open_job(out, {"output_format": "parquet"}, None, None)
    assert isinstance(job, CaptionJob) and list((tmp_path / "job").glob("captions-*.parquet"))
    expected = [r for r in single_rows if r["path"] in set(chosen)]
    rows = job.read_rows()
    assert [r["path"] for r in rows] == [r["path"] for r in expected]
    assert [r.get("caption") for r in rows] == [r.get("caption") for r in expected]
    assert [r.get("tokens") for r in rows] == [r.get("tokens") for r in expected]


def test_without_ray_installed_the_command_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    import importlib.util

    from batch import cli as caption_cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert caption_cli.main(["--ray", str(tmp_path), "--out", str(tmp_path / "job")]) == 2
    assert "make install-ray" in capsys.readouterr().err


def test_actors_that_cannot_start_stop_the_job_with_one_line_and_keep_the_folder(bundle_dir, photos, tmp_path):
    out = tmp_path / "job"
    env = {**os.environ, **QUIET, "CAPTION_PROVIDERS": "cuda", "CAPTION_STRICT_PROVIDERS": "1"}  # no GPU here
    result = subprocess.run([str(CAPTION), "--ray", str(photos), "--bundle", str(bundle_dir), "--out", str(out),
                             "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1
    # Ray forwards the actors' own log lines too, some after ours: ours is the one that starts "caption:".
    ours = [line for line in result.stderr.splitlines() if line.startswith("caption: error: the Ray job stopped: ")]
    assert len(ours) == 1 and "run the same command again" in ours[0], result.stderr[-3000:]
    assert "CUDA" in ours[0] or "cuda" in ours[0]
    assert (out / "job.json").is_file() and not list(out.glob("captions-*"))

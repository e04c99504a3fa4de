"""Caption a whole dataset on Ray Data: `caption --ray`, or `caption_dataset(...)` from Python.

The job's shards (batch/job.py) are the rows of a Ray dataset. A pool of actors,
each holding one caption engine whose onnxruntime threads match the actor's CPUs, captions a
shard at a time and writes its file itself, so results never pass through the driver. Runs on
the cluster at RAY_ADDRESS, or on a local Ray started for the job.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np

from .job import OUTPUT_FORMATS, CaptionJob, bundle_identity, open_job
from .image_files import UsageError, find_images, is_uri, read_bytes, read_list_file

MAX_SHARD_SIZE = 1024      # images per shard file: about a minute's work for a one-CPU actor
SHARDS_PER_ACTOR = 4       # small jobs still get several shards per actor, to share the work out


@dataclass
class JobSummary:
    """What one run of a job did. `caption_s` runs from the first shard's start to the last one's
    end, so it leaves out starting Ray and the actors."""

    images: int
    shards: int
    shards_before: int                 # finished by earlier runs, not redone
    captioned: int = 0
    skipped: int = 0
    actors: int = 0
    wall_s: float = 0.0
    caption_s: float = 0.0

    @property
    def images_per_second(self) -> float:
        return (self.captioned + self.skipped) / self.caption_s if self.caption_s else 0.0


def local_copy_of_bundle(bundle: str) -> str:
    """A bundle folder on this node: local paths as they are, URIs copied once into a temporary folder."""
    if not is_uri(bundle):
        return bundle
    from pyarrow import fs as pafs

    target = tempfile.mkdtemp(prefix="caption-bundle-")
    pafs.copy_files(bundle.rstrip("/"), target)
    return target


class ShardCaptioner:
    """A Ray actor: loads the bundle once, then captions whole shards and writes each one's file."""

    def __init__(self, job: CaptionJob, bundle: str, engine_options, verify_checksums: bool, max_pixels: int,
                 beam_size: int, length_penalty: float, batch_size: int):
        from bundle.format import load_bundle

        from server.engine import CaptionEngine

        self.job, self.max_pixels, self.beam_size = job, max_pixels, beam_size
        self.length_penalty, self.batch_size = length_penalty, batch_size
        self.engine = CaptionEngine(load_bundle(local_copy_of_bundle(bundle), verify_checksums), engine_options)

    def __call__(self, batch: dict) -> dict:
        from .files import caption_files

        results = {"shard": [], "images": [], "skipped": [], "started": [], "finished": []}
        for shard in map(int, batch["shard"]):
            started = time.time()
            paths = self.job.shard_paths(shard)
            rows = [row for rows in caption_files(self.engine, paths, self.max_pixels, self.beam_size,
                                                  self.length_penalty, self.batch_size,
                                                  read=lambda path: read_bytes(self.job.readable(path)))
                    for row in rows]
            self.job.write_shard(shard, rows)
            for key, value in (("shard", shard), ("images", len(rows)), ("skipped", sum("error" in r for r in rows)),
                               ("started", started), ("finished", time.time())):
                results[key].append(value)
        return {key: np.asarray(values) for key, values in results.items()}


def start_ray(cpus: int | None = None) -> None:
    """Connect to RAY_ADDRESS's cluster, or start a local Ray with `cpus` CPUs (all by default)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level="WARNING")
    else:
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")


def caption_dataset(inputs: list[str], out: str, *, bundle: str | None = None, list_file: str | None = None,
                    output_format: str = "jsonl", shard_size: int | None = None, batch_size: int = 8,
                    beam_size: int | None = None, cpus_per_actor: int = 1, actors: int | None = None,
                    ray_cpus: int | None = None, progress: bool = True, config=None) -> JobSummary:
    """Caption every image that `inputs` (files, folders, globs; local or URIs) and `list_file` name
    into sharded rows under `out`, resuming the job already there. Decoding and engine settings
    come from `config` (CAPTION_* variables by default). Raises UsageError for bad arguments."""
    from server.config import Config

    config = config or Config.from_env()
    if output_format not in OUTPUT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(OUTPUT_FORMATS)} with --ray")
    if batch_size < 1 or cpus_per_actor < 1 or (shard_size is not None and shard_size < 1):
        raise UsageError("--batch-size, --shard-size and --cpus-per-actor must be at least 1")
    if not inputs and list_file is None:
        raise UsageError("name images: PATHs, --list FILE, or both")
    bundle = str(bundle or config.bundle)
    if not is_uri(bundle):
        bundle = os.path.abspath(bundle)  # actors need not share the driver's working folder
        _check_bundle(bundle, config.verify_checksums)
    beam_size = config.default_beam_size if beam_size is None else beam_size
    if not 1 <= beam_size <= config.max_beam_size:
        raise UsageError(f"--beam-size must be between 1 and {config.max_beam_size}")
    settings = {"inputs": list(map(str, inputs)), "list": list_file, "bundle_sha256": bundle_identity(bundle),
                "beam_size": beam_size, "length_penalty": config.length_penalty, "output_format": output_format,
                "shard_size": shard_size}
    started = time.perf_counter()

    def list_images() -> list[str]:
        listed = find_images(inputs) if inputs else []
        return listed + (read_list_file(list_file) if list_file else [])

    def choose_shard_size(images: int) -> int:
        # Whole encoder batches per shard, so each shard's batches are those of the one-process command.
        spread = -(-images // (SHARDS_PER_ACTOR * max(1, _actor_slots(cpus_per_actor, ray_cpus))))
        return min(MAX_SHARD_SIZE, -(-spread // batch_size) * batch_size)

    try:
        job = open_job(out, settings, list_images, choose_shard_size)
        pending = job.pending()
    except OSError as exc:  # the output folder cannot be made, listed or written
        raise UsageError(f"{out}: {exc}") from None
    summary = JobSummary(images=job.images, shards=job.shards, shards_before=job.shards - len(pending))
    if pending:
        _run_shards(job, pending, summary, bundle, config, cpus_per_actor, actors, ray_cpus, batch_size, progress)
    summary.wall_s = time.perf_counter() - started
    return summary


def _check_bundle(bundle: str, verify_checksums: bool) -> None:
    """A local bundle is read once here, so a bad one is one line, not a failure in every actor."""
    from bundle.format import BundleError, load_bundle

    try:
        load_bundle(bundle, verify_checksums)
    except (BundleError, OSError) as exc:
        raise UsageError(str(exc)) from None


def _actor_slots(cpus_per_actor: int, ray_cpus: int | None) -> int:
    import ray

    start_ray(ray_cpus)
    return max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_actor))


def _run_shards(job: CaptionJob, pending: list[int], summary: JobSummary, bundle: str, config,
                cpus_per_actor: int, actors: int | None, ray_cpus: int | None, batch_size: int, progress: bool):
    import ray.data

    summary.actors = min(len(pending), actors or _actor_slots(cpus_per_actor, ray_cpus))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = False
    engine_options = replace(config.engine_options(), intra_op_threads=cpus_per_actor)
    # One block per shard, so idle actors can take any shard that is left.
    shards = ray.data.from_items([{"shard": k} for k in pending], override_num_blocks=len(pending))
    # One shard in flight per actor: a queue behind a busy actor would idle the others at the end.
    pool = ray.data.ActorPoolStrategy(size=summary.actors, max_tasks_in_flight_per_actor=1)
    captioned = shards.map_batches(
        ShardCaptioner, batch_size=1, compute=pool, num_cpus=cpus_per_actor,
        fn_constructor_kwargs=dict(job=job, bundle=bundle, engine_options=engine_options,
                                   verify_checksums=config.verify_checksums, max_pixels=config.max_pixels,
                                   beam_size=job.settings["beam_size"],
                                   length_penalty=job.settings["length_penalty"], batch_size=batch_size))
    first, last = float("inf"), 0.0
    for row in captioned.iter_rows():
        summary.skipped += int(row["skipped"])
        summary.captioned += int(row["images"]) - int(row["skipped"])
        first, last = min(first, float(row["started"])), max(last, float(row["finished"]))
    summary.caption_s = max(0.0, last - first)

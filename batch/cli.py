"""Caption many images from the command line with the server's engine: `caption PATH...`.

PATHs are files, folders (searched recursively) or glob patterns; --list names a file of paths.
One row per image goes to --out (JSON lines, or CSV when the file ends in .csv; standard output
by default); a file that cannot be captioned gets a row with its reason instead of a caption.
With --out, a second run skips the images already captioned in the file and tries the ones
that failed again (their error rows are replaced), so a large folder can be captioned in several
goes. With --ray, a pool of Ray actors captions the images into sharded
files in the --out folder (batch/ray_job.py); PATHs may then also be pyarrow URIs.
Exit status: 0 when every image has a caption at the end, 1 when some were skipped (or a Ray job failed
part-way), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .image_files import UsageError, find_images, read_list_file
from .ray_job import MAX_SHARD_SIZE

CSV_FIELDS = ("path", "caption", "tokens", "log_prob", "error")  # tokens joined by spaces


def drop_partial_last_line(out: Path) -> None:
    """Cut off the half-written row an interrupted run may have left, so the file stays well-formed."""
    with open(out, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def earlier_rows(out: Path | None, fmt: str) -> list[dict]:
    """The rows an earlier run wrote to `out`; none when there is no such file."""
    if out is None or not out.exists():
        return []
    drop_partial_last_line(out)
    try:
        with open(out, newline="") as f:
            if fmt == "jsonl":
                rows = [json.loads(line) for line in f if line.strip()]
                if not all(isinstance(row, dict) and "path" in row for row in rows):
                    raise ValueError
                return rows
            reader = csv.DictReader(f)
            rows = list(reader)
    except (ValueError, csv.Error):
        raise UsageError(f"{out} exists and is not {fmt} output of this command; choose another --out") from None
    if rows and tuple(reader.fieldnames or ()) != CSV_FIELDS:
        raise UsageError(f"{out} has the columns {','.join(reader.fieldnames or ())}, not {','.join(CSV_FIELDS)} "
                         "(an older version wrote it); choose another --out")
    return rows


def failed(row: dict) -> bool:
    return bool(row.get("error"))  # CSV rows have the column, empty when captioned


def rewrite_without(out: Path, fmt: str, rows: list[dict], retried: set[str]) -> None:
    """Rewrite `out` without the error rows of the images tried again (atomically: a crash
    leaves the old file)."""
    temporary = out.with_name(out.name + ".tmp")
    writer = RowWriter(temporary, fmt, new=True)
    try:
        writer.write([row for row in rows if not (failed(row) and row["path"] in retried)])
    finally:
        writer.close()
    temporary.replace(out)


class RowWriter:
    """Appends result rows as JSON lines or CSV, flushed per batch so an interruption loses little."""

    def __init__(self, out: Path | None, fmt: str, new: bool = False):
        self.fmt = fmt
        new = new or out is None or not out.exists() or out.stat().st_size == 0
        self.file = open(out, "w" if new else "a", newline="") if out is not None else sys.stdout
        self.csv = csv.DictWriter(self.file, CSV_FIELDS) if fmt == "csv" else None
        if self.csv and new:
            self.csv.writeheader()

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            if self.csv:
                tokens = row.get("tokens", "")  # a list, or already joined in a row read back from a file
                self.csv.writerow({**{k: row.get(k, "") for k in CSV_FIELDS},
                                   "tokens": tokens if isinstance(tokens, str) else " ".join(tokens)})
            else:
                self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not sys.stdout:
            self.file.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caption", description="Caption image files with a model bundle.")
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders or glob patterns")
    parser.add_argument("--list", dest="list_file", metavar="FILE", help="a file of image paths, one per line")
    parser.add_argument("--bundle", help="model bundle folder (default: CAPTION_BUNDLE or onnx_models/demo)")
    parser.add_argument("--out", help="output file; resumed when it exists (default: standard output). "
                                      "With --ray: the folder for the shards (required)")
    parser.add_argument("--format", choices=("jsonl", "csv", "parquet"),
                        help="default: csv for a .csv --out, else jsonl; parquet with --ray only")
    parser.add_argument("--batch-size", type=int, default=8, help="images per encoder run (default 8)")
    parser.add_argument("--beam-size", type=int, help="1 = greedy (default: CAPTION_DEFAULT_BEAM_SIZE or 1)")
    parser.add_argument("--attention", action="store_true",
                        help="also write each word's attention weights over the image grid (JSON lines; models "
                             "with an attention decoder)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    ray = parser.add_argument_group("Ray Data (on the cluster at RAY_ADDRESS, else a local Ray)")
    ray.add_argument("--ray", action="store_true", help="caption on a pool of Ray actors into sharded files")
    ray.add_argument("--shard-size", type=int, help=f"images per shard file (default: the job's size spread over "
                                                    f"the actors, at most {MAX_SHARD_SIZE})")
    ray.add_argument("--cpus-per-actor", type=int, default=1,
                     help="CPUs (and onnxruntime threads) of each actor (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"caption: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("caption: interrupted; run the same command again to go on", file=sys.stderr)
        return 130


def run(args) -> int:
    from bundle.format import BundleError, load_bundle

    from server.config import Config, ConfigError
    from server.providers import ProviderError

    if args.ray:
        return run_on_ray(args)
    if args.format == "parquet" or args.shard_size is not None:
        raise UsageError("--format parquet and --shard-size go with --ray")
    out = Path(args.out) if args.out is not None else None
    fmt = args.format or ("csv" if out is not None and out.suffix.lower() == ".csv" else "jsonl")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.attention and fmt != "jsonl":
        raise UsageError("--attention writes JSON lines (each word's weights are a list): "
                         + ("drop --format csv" if args.format == "csv" else f"write them to a .jsonl file, not {out}"))
    if not args.paths and args.list_file is None:
        raise UsageError("name images: PATHs, --list FILE, or both")
    paths = (find_images(args.paths) if args.paths else []) + (read_list_file(args.list_file) if args.list_file else [])
    if not paths:
        raise UsageError("no image files found in " + ", ".join(args.paths))
    try:
        config = Config.from_env()
        if args.bundle is not None:
            config.bundle = Path(args.bundle)
        beam_size = config.default_beam_size if args.beam_size is None else args.beam_size
        if not 1 <= beam_size <= config.max_beam_size:
            raise UsageError(f"--beam-size must be between 1 and {config.max_beam_size}")
        earlier = earlier_rows(out, fmt)
        done = {row["path"] for row in earlier if not failed(row)}
        todo = [p for p in paths if p not in done]
        retried = {row["path"] for row in earlier if failed(row)} & set(todo)
        from .files import caption_files
        from server.path_choice import engine_for

        engine = engine_for(load_bundle(config.bundle, config.verify_checksums), config)
    except (BundleError, ConfigError, ProviderError, OSError) as exc:
        raise UsageError(str(exc)) from None
    if args.attention and not engine.has_attention:
        raise UsageError(f"--attention: model {engine.bundle.name!r} has no attention weights to write (its decoder "
                         "reads the pooled image, or its bundle was exported without them)")

    if earlier:
        again = f" ({len(retried)} of them failed before and are tried again)" if retried else ""
        print(f"caption: {len(paths) - len(todo)} of {len(paths)} images already in {out}; "
              f"captioning the other {len(todo)}{again}", file=sys.stderr)
    if retried:
        rewrite_without(out, fmt, earlier, retried)
    writer = RowWriter(out, fmt)
    skipped = captioned = 0
    started = time.perf_counter()
    try:
        with tqdm(total=len(todo), unit="img", desc="captioning", disable=args.quiet, file=sys.stderr) as bar:
            for rows in caption_files(engine, todo, config.max_pixels, beam_size, config.length_penalty,
                                      args.batch_size, attention=args.attention):
                writer.write(rows)
                for row in rows:
                    if "error" in row:
                        skipped += 1
                        bar.write(f"caption: skipped {row['path']}: {row['error']}", file=sys.stderr)
                captioned += sum("error" not in row for row in rows)
                bar.update(len(rows))
    finally:
        writer.close()
    seconds = time.perf_counter() - started
    print(f"caption: {captioned} captioned, {skipped} skipped in {seconds:.1f} s", file=sys.stderr)
    return 1 if skipped else 0


def run_on_ray(args) -> int:
    """`caption --ray`: the job in the --out folder, started or resumed, on Ray actors."""
    from server.config import Config, ConfigError
    from .ray_job import caption_dataset

    missing = [name for name in ("ray", "pyarrow") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"--ray needs Ray Data ({' and '.join(missing)} not installed): make install-ray, "
                         "or pip install -r requirements-ray.txt")
    if args.out is None:
        raise UsageError("--ray needs --out FOLDER for the shards")
    if args.attention:
        raise UsageError("--attention is for a local run (without --ray)")
    if args.format == "csv":
        raise UsageError("--ray writes jsonl or parquet, not csv")
    try:
        summary = caption_dataset(args.paths, args.out, bundle=args.bundle, list_file=args.list_file,
                                  output_format=args.format or "jsonl", shard_size=args.shard_size,
                                  batch_size=args.batch_size, beam_size=args.beam_size,
                                  cpus_per_actor=args.cpus_per_actor, progress=not args.quiet,
                                  config=Config.from_env())
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    except UsageError:
        raise
    except Exception as exc:  # a failed actor or task: what finished stays finished
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        print(f"caption: error: the Ray job stopped: {reason[:300]}; finished shards are kept in {args.out}, "
              "run the same command again to go on", file=sys.stderr)
        return 1
    if summary.shards_before:
        print(f"caption: {summary.shards_before} of {summary.shards} shards already in {args.out}", file=sys.stderr)
    print(f"caption: {summary.captioned} captioned, {summary.skipped} skipped in {summary.wall_s:.1f} s "
          f"({summary.shards - summary.shards_before} shards on {summary.actors} actors, "
          f"{summary.images_per_second:.1f} images/s once started)", file=sys.stderr)
    return 1 if summary.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
